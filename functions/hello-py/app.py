"""hello-py: a wasi:http/proxy function written in Python, built with
componentize-py. It shows that components from other toolchains run on wisp
unchanged: it greets and echoes the method, path and body."""

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok
import os


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = type(request.method()).__name__.removeprefix("Method_").upper()
        path = request.path_with_query() or "/"
        body = b""
        incoming = request.consume()
        with incoming.stream() as stream:
            while True:
                try:
                    body += stream.blocking_read(65536)
                except Exception:
                    break
        OutgoingBody  # keep the import visible to readers
        greeting = os.environ.get("GREETING", "Hello")
        text = f"{greeting} from Python! method: {method} path: {path} body: ".encode() + body + b"\n"
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain; charset=utf-8")]))
        out_body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with out_body.write() as out:
            out.blocking_write_and_flush(text)
        OutgoingBody.finish(out_body, None)
