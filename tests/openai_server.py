"""A loopback OpenAI-compatible chat-completions server for the tests: the one stand-in for
``vllm serve`` / SGLang, which cannot run on these CPU machines.

It serves a Qwen2.5-VL checkpoint through transformers as vLLM does: the messages through the
processor's chat template, base64 images decoded and fed through the processor (with the
checkpoint's pixel limits: an image already at its model frame is not resized), ``generate``
greedy at temperature 0 (else sampled, seeded), the reply streamed one token per SSE chunk,
``finish_reason`` "stop" or "length", usage last, then ``data: [DONE]``. It answers
``GET /v1/models`` too.

``faults``: a list the server pops one item from per chat request — ``"500"`` (an error
response), ``"429"``, ``"400"``, ``"timeout"`` (sleep ``hang`` seconds before answering),
``"drop"`` (stream a few tokens, then close the connection without a finish reason) or
``None`` (answer). ``requests`` counts the chat requests, ``in_flight_max`` the most served at
once.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    def __init__(self, model_dir: str, min_pixels: int, max_pixels: int, name: str = "served-model",
                 hang: float = 5.0, work_seconds: float = 0.0):
        import torch
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.torch = torch
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.processor = AutoProcessor.from_pretrained(model_dir, min_pixels=min_pixels, max_pixels=max_pixels)
        self.name, self.hang, self.work_seconds = name, hang, work_seconds
        self.faults: list = []
        self.requests = 0
        self.in_flight = 0
        self.in_flight_max = 0
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ----- the model ---------------------------------------------------------------------------

    def _inputs(self, messages: list[dict]):
        from PIL import Image

        hf, images = [], []
        for m in messages:
            content = m["content"]
            if isinstance(content, str):
                hf.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
                continue
            parts = []
            for c in content:
                if c["type"] == "image_url":
                    data = c["image_url"]["url"].split(",", 1)[1]
                    img = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
                    images.append(img)
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": c["text"]})
            hf.append({"role": m["role"], "content": parts})
        text = self.processor.apply_chat_template(hf, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        if "mm_token_type_ids" not in inputs:
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.model.config.image_token_id).int()
        return inputs

    def generate(self, body: dict):
        """Yield the reply's text one token at a time, then ``(finish_reason, prompt, completion)``."""
        torch = self.torch
        inputs = self._inputs(body["messages"])
        kw = dict(max_new_tokens=int(body.get("max_tokens") or 64))
        temperature = float(body.get("temperature") or 0.0)
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=float(body.get("top_p") or 1.0))
            torch.manual_seed(int(body.get("seed") or 0))
        else:
            kw.update(do_sample=False)
        tok = self.processor.tokenizer
        eos = set(self.model.generation_config.eos_token_id if isinstance(self.model.generation_config.eos_token_id, list)
                  else [self.model.generation_config.eos_token_id]) | {tok.convert_tokens_to_ids("<|im_end|>")}
        with self._model_lock, torch.no_grad():
            out = self.model.generate(**inputs, **kw, eos_token_id=sorted(eos), pad_token_id=tok.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        text, ids = "", []
        for t in new:
            if t in eos:
                yield ("stop", inputs["input_ids"].shape[1], len(ids) + 1)
                return
            ids.append(t)
            full = tok.decode(ids)
            if full.endswith("\ufffd"):
                continue
            yield full[len(text):]
            text = full
        yield ("length", inputs["input_ids"].shape[1], len(ids))

    # ----- HTTP ---------------------------------------------------------------------------------

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"     # the stream ends when the connection closes

            def log_message(self, *args):
                pass

            def _json(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    return self._json(200, {"object": "list", "data": [{"id": server.name, "object": "model"}]})
                self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                with server._lock:
                    server.requests += 1
                    server.bodies.append(body)
                    fault = server.faults.pop(0) if server.faults else None
                    server.in_flight += 1
                    server.in_flight_max = max(server.in_flight_max, server.in_flight)
                try:
                    self._chat(body, fault)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _chat(self, body: dict, fault) -> None:
                if fault in ("500", "429", "400"):
                    return self._json(int(fault), {"error": {"message": f"injected {fault}"}})
                if fault == "timeout":
                    time.sleep(server.hang)
                if body.get("model") not in (None, server.name):
                    return self._json(404, {"error": {"message": f"the model {body.get('model')!r} does not exist"}})
                if server.work_seconds:
                    time.sleep(server.work_seconds)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def send(obj) -> None:
                    self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                    self.wfile.flush()

                chunk = {"id": "chatcmpl-loopback", "object": "chat.completion.chunk", "model": server.name}
                sent = 0
                for piece in server.generate(body):
                    if isinstance(piece, tuple):
                        finish, prompt, completion = piece
                        send({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                        if (body.get("stream_options") or {}).get("include_usage"):
                            send({**chunk, "choices": [], "usage": {"prompt_tokens": prompt,
                                                                     "completion_tokens": completion,
                                                                     "total_tokens": prompt + completion}})
                        self.wfile.write(b"data: [DONE]\n\n")
                        return
                    send({**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                    sent += 1
                    if fault == "drop" and sent == 3:
                        return             # the connection closes mid-stream: no finish reason, no [DONE]

        return Handler
