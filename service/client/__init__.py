"""The Python client of a running groklab service (httpx): experiments, metrics, checkpoints,
analysis, live events and sweeps.

    from service.client import Client

    with Client() as groklab:                      # GROKLAB_URL, GROKLAB_TOKEN
        job = groklab.submit(preset="ci-small", name="add-47")
        job = groklab.wait(job["id"])              # a progress bar on stderr
        frame = groklab.metrics(job["id"], names=["train_acc", "val_acc"])

Every failure raises GroklabError: `status` is the HTTP status (None when the service could not
be reached or a download failed its check) and `detail` is the server's own `detail`.

Imports only the spec's deep_merge of ours (the client runs on a laptop beside a notebook):
- rest: the Client, its errors and its progress bar
- sse: the server-sent events parser behind Client.events
"""
from service.client.rest import DEFAULT_URL, Client, GroklabError
from service.client.sse import ServerSentEvent, parse_sse

__all__ = ["DEFAULT_URL", "Client", "GroklabError", "ServerSentEvent", "parse_sse"]
