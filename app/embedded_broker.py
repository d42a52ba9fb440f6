"""The embedded broker: kombu's filesystem transport, with messages published atomically.

kombu's own ``_put`` creates ``<time>_<uuid>.<queue>.msg`` and then writes into it, while a
consumer may already have moved that file away and read it empty: the worker's consumer then dies
on a ``JSONDecodeError`` and the job waits forever (seen under load with the API and a worker on
two cores). Here the message is written under a name no consumer picks up and renamed into place,
which is atomic on one filesystem.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "rnnlabfs"


class AtomicChannel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # as kombu
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        # A leading dot and no ".msg" ending: neither the consumer nor broker_job_ids() reads it.
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {name!r} to directory") from exc
        finally:
            if os.path.exists(partial):
                os.unlink(partial)


class AtomicTransport(filesystem.Transport):
    Channel = AtomicChannel


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:AtomicTransport")
