"""The operator reads what a serving pod has loaded from its open /metrics (no API key needed)."""
import http.server
import threading

from modelyard.operator import probe

METRICS = b"""# HELP modelyard_adapter_loaded 1 for each LoRA adapter loaded
# TYPE modelyard_adapter_loaded gauge
modelyard_adapter_loaded{adapter="sql"} 1.0
modelyard_adapter_loaded{adapter="chat"} 1.0
# HELP modelyard_requests_in_flight Requests being served now
# TYPE modelyard_requests_in_flight gauge
modelyard_requests_in_flight 0.0
"""


def test_loaded_adapters_are_read_from_metrics():
    assert sorted(probe.loaded_from_metrics(METRICS.decode())) == ["chat", "sql"]
    assert probe.loaded_from_metrics("modelyard_requests_in_flight 0\n") == []


def test_probe_asks_metrics_only_of_ready_pods_and_sends_no_credentials():
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(METRICS)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ready = {"status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}
        pending = {"status": {"phase": "Pending", "podIP": "127.0.0.1"}}
        assert probe.adapters_loaded([ready, ready, pending], srv.server_address[1]) == {"sql": 2, "chat": 2}
        assert seen == [("/metrics", None), ("/metrics", None)]
    finally:
        srv.shutdown()
