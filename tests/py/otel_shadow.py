"""A shadow service instrumented the way real services are: the OpenTelemetry Python SDK, its
WSGI middleware on the way in and its urllib instrumentation on the way out, with the default
propagators (W3C tracecontext and baggage) and the baggage span processor that copies baggage
onto spans. For each request it calls a downstream service, which records the headers it gets.

    otel_shadow.py shadow LISTEN_PORT DOWNSTREAM_PORT SPANS_FILE
    otel_shadow.py downstream LISTEN_PORT HEADERS_FILE

Used by tests/tests/trace_isolation_b.rs. Both answer GET /ready without doing anything else.
"""

import json
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from wsgiref.simple_server import WSGIRequestHandler, make_server


def downstream(port, headers_file):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/ready":
                with open(headers_file, "a") as f:
                    f.write(json.dumps({"path": self.path, "headers": dict(self.headers.items())}) + "\n")
            body = b"downstream ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


def shadow(port, downstream_port, spans_file):
    from opentelemetry import trace
    from opentelemetry.instrumentation.urllib import URLLibInstrumentor
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.processor.baggage import ALLOW_ALL_BAGGAGE_KEYS, BaggageSpanProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        def export(self, spans):
            with open(spans_file, "a") as f:
                for s in spans:
                    c = s.context
                    f.write(
                        json.dumps(
                            {
                                "name": s.name,
                                "kind": s.kind.name,
                                "trace_id": format(c.trace_id, "032x"),
                                "span_id": format(c.span_id, "016x"),
                                "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                                "sampled": c.trace_flags.sampled,
                                "attributes": {k: str(v) for k, v in (s.attributes or {}).items()},
                            }
                        )
                        + "\n"
                    )
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BaggageSpanProcessor(ALLOW_ALL_BAGGAGE_KEYS))
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)
    URLLibInstrumentor().instrument()

    def app(environ, start_response):
        if environ.get("PATH_INFO") != "/ready":
            with urllib.request.urlopen(f"http://127.0.0.1:{downstream_port}/down", timeout=5) as r:
                r.read()
        body = b"shadow ok\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    make_server("127.0.0.1", port, OpenTelemetryMiddleware(app), handler_class=Quiet).serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "downstream":
        downstream(int(sys.argv[2]), sys.argv[3])
    else:
        shadow(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
