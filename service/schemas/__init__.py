"""The API's pydantic side, one module per resource like the routers: response models, the
parsing and checking of requests, and the shaping of responses. The tables live in
service/contract/models.py; the request body of a submission is the spec
(service/contract/spec.py)."""
