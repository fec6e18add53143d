#!/usr/bin/python3
"""dify-upstream-standin: a TEST DOUBLE standing in for Dify's stack behind the host nginx.

Not Dify. The edge Molecule scenario runs it as the upstream of the nginx role:
  GET  /            200 "dify-upstream-standin"
  POST|PUT <any>    200 JSON {"received_bytes", "http_version", "forwarded_proto", "host"}
  GET  /sse?n=N&delay=S  text/event-stream, N events, S seconds apart, sent as they are made
Usage: dify_upstream_standin.py --listen 127.0.0.1:17401
"""
import argparse
import http.server
import json
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dify-upstream-standin"

    def _send(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server API)
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/sse":
            query = urllib.parse.parse_qs(url.query)
            count = int(query.get("n", ["5"])[0])
            delay = float(query.get("delay", ["0.5"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for index in range(count):
                event = "data: %s\n\n" % json.dumps({"event": "message", "index": index, "sent_at": time.time()})
                data = event.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                if index < count - 1:
                    time.sleep(delay)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        self._send(200, b"dify-upstream-standin\n", "text/plain")

    def _echo(self):
        length = int(self.headers.get("Content-Length", "0"))
        received = 0
        while received < length:
            chunk = self.rfile.read(min(65536, length - received))
            if not chunk:
                break
            received += len(chunk)
        body = json.dumps({
            "received_bytes": received,
            "http_version": self.request_version,
            "forwarded_proto": self.headers.get("X-Forwarded-Proto"),
            "host": self.headers.get("Host"),
        }).encode()
        self._send(200, body)

    do_POST = _echo  # noqa: N815
    do_PUT = _echo  # noqa: N815

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:17401")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
