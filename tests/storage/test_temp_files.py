"""Temp files a crashed process left behind (an API killed mid-upload) are removed at the next start,
whatever their age; files of live processes, and of other hosts sharing the volume, are kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from app.storage import LocalStorage, temp_owner
from tests.stack import ROOT


def test_leftovers_of_a_dead_process_go_at_once_the_rest_by_age(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    # A process that makes an upload's temp file and a dataset work dir, then dies without cleaning up.
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tempfile; from pathlib import Path; from app.storage import LocalStorage, temp_owner; "
            "s = LocalStorage(Path(sys.argv[1])); p = s.temp_path('.upload'); p.write_bytes(b'x' * 1000); "
            "d = tempfile.mkdtemp(dir=s.temp_dir, prefix=temp_owner() + 'dataset-'); (Path(d) / 'a').write_text('y'); "
            "print(p.name)",
            str(tmp_path / "storage"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    mine = storage.temp_path(".parquet")  # this process is alive: an upload in flight
    other_host = storage.temp_dir / "~elsewhere.1~999999~x.upload"  # another machine on the same volume
    other_host.write_text("z")
    legacy = storage.temp_dir / "tmpold.upload"  # a name from before owners were recorded, an hour old
    legacy.write_text("z")
    old = time.time() - 7200
    os.utime(legacy, (old, old))

    assert storage.remove_stale_temp_files(3600) == 3  # the dead process's file and dir, the old file
    left = {p.name for p in storage.temp_dir.iterdir()}
    assert left == {mine.name, other_host.name} and made not in left
    assert mine.name.startswith(temp_owner())
