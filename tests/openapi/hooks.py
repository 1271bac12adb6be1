"""schemathesis hooks for tests/e2e/spec.rs (loaded through SCHEMATHESIS_HOOKS).

openfaas-gateway.yml is OpenFaaS's published gateway spec, kept verbatim.
Where it and OpenFaaS's own gateway and clients disagree, ERRATA and
OPTIONAL below correct it before schemathesis reads the spec; each entry
says what the spec gets wrong and what OpenFaaS does. Everything else is
checked as published.
"""

import json
import os

import schemathesis

# The control API's token travels as HTTP Basic auth, as faas-cli sends it.
# The spec defines the scheme (`basicAuth`) but applies it to no operation.
SECURED = "/system/"

# (path, method) -> {status: description}: statuses the spec does not list.
ERRATA = {
    # The spec lists 200, 202, 404 and 500. A body that is not a scale
    # request (not JSON, a field of the wrong type, min above max) is a
    # 400, as in OpenFaaS's providers ("Cannot parse request").
    ("/system/scale-function/{functionName}", "post"): {
        "400": "Bad Request",
    },
    # The spec lists 200, 404 and 500. A query without `name`, or with a
    # `tail`, `follow` or `since` of the wrong type, is a 400; OpenFaaS's
    # log provider answers 422 ("could not parse the log request").
    ("/system/logs", "get"): {
        "400": "Bad Request",
    },
    # The spec lists 201, 400 and 500. A secret that exists already is a
    # 409, as faas-netes answers (Kubernetes' AlreadyExists).
    ("/system/secrets", "post"): {
        "409": "Conflict",
    },
    # The spec lists 204, 400, 404 and 500. A secret that functions use is
    # deleted only with ?force=true: 409 otherwise.
    ("/system/secrets", "delete"): {
        "409": "Conflict",
    },
}


# Schema -> fields the spec requires that OpenFaaS's own clients leave out.
OPTIONAL = {
    # faas-provider's ScaleServiceRequest has `namespace,omitempty`: faas-cli
    # sends no namespace when it has none (the gateway's autoscaler never
    # does). wisp reads a missing namespace as the default one.
    "ScaleServiceRequest": {"namespace"},
}


@schemathesis.hook
def before_load_schema(context, raw_schema):
    schemas = raw_schema["components"]["schemas"]
    # The spec gives `GET /system/secrets` one SecretDescription; OpenFaaS's
    # providers (and faas-cli, which reads it) list them: an array.
    listed = raw_schema["paths"]["/system/secrets"]["get"]["responses"]["200"]
    listed["content"]["application/json"]["schema"] = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/SecretDescription"},
    }
    for name, fields in OPTIONAL.items():
        schemas[name]["required"] = [f for f in schemas[name]["required"] if f not in fields]
    for path, item in raw_schema["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if path.startswith(SECURED):
                operation.setdefault("security", [{"basicAuth": []}])
                operation["responses"].setdefault("401", {"description": "Unauthorized"})
            for status, description in ERRATA.get((path, method), {}).items():
                operation["responses"].setdefault(status, {"description": description})
    add_links(raw_schema["paths"])


# The stateful phase follows these links (the spec has none): a secret is
# created, then the function `secret-user` deployed with it (the CGI echo
# module the test uploaded, WISP_SPEC_CGI_ARTIFACT) and invoked. The
# deploy's body is the link's whole (`merge_body: false`), so that it is
# never the empty module under that name. No link goes to the secret's
# update or deletion: they take the name in the body, and schemathesis
# counts such a link as followed even when it drew the name itself.
SECRET_USER = "secret-user"


def add_links(paths):
    artifact = os.environ.get("WISP_SPEC_CGI_ARTIFACT")
    if not artifact:
        return
    paths["/system/secrets"]["post"]["responses"]["201"]["links"] = {
        "DeployWithIt": {
            "operationId": "DeployFunction",
            "requestBody": {
                "service": SECRET_USER,
                "image": artifact,
                "secrets": ["$request.body#/name"],
            },
            "x-schemathesis": {"merge_body": False},
        },
        "InvokeTheSecretUser": {
            "operationId": "InvokeFunction",
            "parameters": {"path.functionName": SECRET_USER},
        },
    }


@schemathesis.deserializer("application/x-ndjson")
def ndjson(context, response):
    """`GET /system/logs` streams one LogEntry per line; the spec gives the
    schema of one. Every line must be a JSON object with the same fields as
    the first, which is validated against the schema."""
    lines = [line for line in response.content.decode("utf-8").split("\n") if line]
    if not lines:
        raise NotImplementedError("no log lines to validate")
    entries = [json.loads(line) for line in lines]
    first = entries[0]
    for entry in entries[1:]:
        if not isinstance(entry, dict) or entry.keys() != first.keys():
            raise ValueError(f"log lines differ in shape: {first!r} and {entry!r}")
    return first


# The functions tests/e2e/spec.rs deploys for the run (schemathesis.toml's
# `deployed` dictionary). Requests learn their names from the listings, so
# a delete or a redeploy could take them away within seconds; those go to
# STAND_IN, a function the run itself deploys, instead.
FIXTURES = {"hello", "cgi-echo", "talker"}
STAND_IN = "fuzzed"


@schemathesis.hook
def before_call(context, case, **kwargs):
    path, body = case.operation.path, case.body
    # `follow=true` streams new log lines until the client leaves, so the
    # run would wait on it forever: it is sent as `follow=false` (the
    # followed stream is tested in tests/e2e/logs.rs). Invalid values go out
    # as made.
    if path == "/system/logs" and isinstance(case.query, dict):
        if case.query.get("follow") in (True, "true"):
            case.query["follow"] = "false"
    if path == "/system/functions" and isinstance(body, dict):
        for field in ("functionName", "service"):
            if isinstance(body.get(field), str) and body[field] in FIXTURES:
                body[field] = STAND_IN
