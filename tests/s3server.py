"""A real S3-API server for the suite and the benches: moto's standalone server on 127.0.0.1.

It speaks the S3 HTTP protocol (multipart uploads, presigned URLs, ListMultipartUploads), so the
S3 storage is tested through the same client library and code paths as against MinIO or AWS S3.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# moto accepts any credentials; these only have to be present so the clients sign requests.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen[bytes]

    def env(self, bucket: str, prefix: str = "rnnlab") -> dict[str, str]:
        """The RNNLAB_* and AWS_* settings that point rnnlab at ``bucket`` on this server."""
        return {
            **CREDENTIALS,
            "RNNLAB_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "RNNLAB_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def boto_client(self) -> Any:
        """A boto3 client, for looking into the store from a test (rnnlab itself talks through obstore)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=CREDENTIALS["AWS_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str) -> None:
        self.boto_client().create_bucket(Bucket=name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(log_path: Path | None = None, timeout_s: float = 60.0) -> Iterator[S3Server]:
    """Start ``moto_server`` on a free port of 127.0.0.1; stop it on exit."""
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}")
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {url} in {timeout_s} s") from None
                time.sleep(0.1)
        yield S3Server(endpoint_url=url, process=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]
