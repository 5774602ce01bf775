"""A local OpenAI-compatible chat-completions server for VQAScore and upsampling tests (real HTTP on 127.0.0.1).

VQAScore requests (a question + an image) get first-token logprobs; upsampling requests (a system message +
"Prompt: ...") get ``rewrites[prompt]`` (default ``"a detailed picture of <prompt>"``) cut to the request's
``max_tokens`` words. Each prompt gets scripted behaviour per attempt from ``plan``:
``"ok"`` (logprobs from ``answers``), ``"429"``, ``"500"``, ``"503"``, ``"401"``, ``"400"``, ``"slow"``
(sleeps ``slow_s`` then answers: a client timeout), ``"malformed"`` (invalid JSON),
``"nologprobs"`` (valid JSON without logprobs), ``"nocontent"`` (a chat reply without text). The last
action repeats.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

QUESTION = re.compile(r'^Does this figure show "(.*)"\? Please answer yes or no\.$', re.S)
DEFAULT_ANSWER = [("Yes", -0.2), ("No", -1.8), (" yes", -4.0)]


class FakeVQAServer:
    def __init__(
        self,
        answers: dict[str, list[tuple[str, float]]] | None = None,
        plan: dict[str, list[str]] | None = None,
        slow_s: float = 1.5,
        rewrites: dict[str, str] | None = None,
    ) -> None:
        self.answers = answers or {}
        self.rewrites = rewrites or {}
        self.plan = plan or {}
        self.slow_s = slow_s
        self.attempts: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self.log: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.handle(self, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeVQAServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, req: BaseHTTPRequestHandler, body: dict) -> None:
        chat = body["messages"][0]["role"] == "system"
        if chat:  # an upsampling request
            prompt, size = body["messages"][1]["content"].removeprefix("Prompt: "), None
        else:
            text, image = body["messages"][0]["content"][0]["text"], body["messages"][0]["content"][1]
            prompt = QUESTION.match(text).group(1)
            url = image["image_url"]["url"]
            assert url.startswith("data:image/png;base64,")
            size = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size
        with self.lock:
            attempt = self.attempts[prompt]
            self.attempts[prompt] += 1
            actions = self.plan.get(prompt, ["ok"])
            action = actions[min(attempt, len(actions) - 1)]
            self.log.append(
                {
                    "prompt": prompt,
                    "action": action,
                    "image_size": size,
                    "authorization": req.headers.get("Authorization", ""),
                    "body": body,
                }
            )
        if action in ("429", "500", "503", "401", "400"):
            return self._send(req, int(action), {"error": {"message": f"scripted {action}", "type": "test"}})
        if action == "malformed":
            return self._send(req, 200, "{not json", raw=True)
        if action == "nologprobs":
            reply = self._completion(body, prompt)
            reply["choices"][0]["logprobs"] = None
            return self._send(req, 200, reply)
        if action == "nocontent":
            reply = self._rewrite(body, prompt)
            reply["choices"][0]["message"]["content"] = None
            return self._send(req, 200, reply)
        if action == "slow":
            time.sleep(self.slow_s)
        try:
            self._send(req, 200, self._rewrite(body, prompt) if chat else self._completion(body, prompt))
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def _completion(self, body: dict, prompt: str) -> dict:
        top = self.answers.get(prompt, DEFAULT_ANSWER)
        token, logprob = max(top, key=lambda t: t[1]) if top else ("The", -0.1)
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": token},
                    "logprobs": {
                        "content": [
                            {
                                "token": token,
                                "logprob": logprob,
                                "bytes": None,
                                "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top],
                            }
                        ]
                    },
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
        }

    def _rewrite(self, body: dict, prompt: str) -> dict:
        words = self.rewrites.get(prompt, f"a detailed picture of {prompt}").split()
        cap = body.get("max_tokens") or len(words)
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words[:cap])},
                    "finish_reason": "length" if len(words) > cap else "stop",
                }
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": min(cap, len(words)), "total_tokens": 0},
        }

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, payload: object, raw: bool = False) -> None:
        data = (payload if raw else json.dumps(payload)).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        if status == 429:
            req.send_header("Retry-After", "0")
        req.end_headers()
        req.wfile.write(data)
