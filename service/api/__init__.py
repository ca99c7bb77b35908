"""The REST API: dependencies, middleware and one router per resource."""
