"""The RankQ worker: runs handlers on the messages of one queue, with leases kept alive while they
run and a drain on SIGTERM that neither loses nor repeats work.

    from rankq import Worker
    worker = Worker("http://127.0.0.1:8080", queue="emails", concurrency=16)

    @worker.handler
    def send_email(msg): ...

    worker.run()
"""

from .outcomes import Reject, Retry
from .runtime import Worker

__all__ = ["Reject", "Retry", "Worker"]
