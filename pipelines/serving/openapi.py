"""The OpenAPI description of routes that read their body themselves (JSON or a `.npy` file)."""

from __future__ import annotations

from pipelines.serving.requests import JSON, NPY, ECGOptions


def body_doc(request_class: type[ECGOptions], options_class: type[ECGOptions]) -> dict:
    """The OpenAPI request body (JSON of `request_class`, or a `.npy` file) and the query parameters that
    come with a `.npy` body (the fields of `options_class`)."""
    query = [
        {"name": name, "in": "query", "required": False, "schema": schema, "description": "with a .npy body only"}
        for name, schema in options_class.model_json_schema()["properties"].items()
    ]
    return {
        "parameters": query,
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": _inlined(request_class.model_json_schema())},
                NPY: {"schema": {"type": "string", "format": "binary", "description": "a .npy file (numpy.save)"}},
            },
        },
    }


def _inlined(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` references replaced by the definitions (OpenAPI's
    components do not hold them)."""
    definitions = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(item) for item in node] if isinstance(node, list) else node

    return resolve(schema)
