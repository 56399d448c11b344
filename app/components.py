"""Two interactive attention views drawn in the browser (Streamlit ``components.v2``, inline
JavaScript, nothing fetched):

* :func:`model_view`: every head's pattern as a thumbnail, a layer per row (BertViz's model view,
  Vig 2019, arXiv 1906.05714), drawn as one canvas: labelled by layer and head; hovering shows the
  head, the query and key tokens and the weight; clicking a thumbnail returns its head. Colour on a
  log scale (0.001 to 1, the default), per thumbnail (0 to the head's largest weight on keys after
  the first: key 0 is the usual attention sink and would leave the rest dark), or linear (0 to 1).
* :func:`token_view`: the prompt's tokens (CircuitsVis's coloured tokens, Cooney & Nanda 2023);
  hovering a token colours where it attends (one strip) and what attends to it (the other), with
  no round trip to the server.

Weights travel as uint16 (``round(w * 65535)``, so shown to 1e-4): the model view's as one binary
payload (:func:`pack`: no base64, no JSON for 4.4 M weights at 128 tokens), the token view's in
base64; tokens as JSON strings, put on the page with ``textContent`` (never parsed as HTML: a
``<script>`` token shows as text). The colour map is the figures' sequential scale (Viridis),
sampled in Python.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import streamlit as st
from plotly.colors import sample_colorscale

from workbench.figures.shapes import token_label
from workbench.figures.style import SEQUENTIAL

SCALES = ("log", "per head", "linear")
LOG_FLOOR = 1e-3  # the log scale's lowest colour: weights at or below 0.001
MAX_TOKENS = 512  # a bound on what is sent to the browser (30 x 9 x 512^2 x 2 bytes = 141 MB)


def _lut() -> list[list[int]]:
    colours = sample_colorscale(SEQUENTIAL, [i / 255 for i in range(256)], colortype="tuple")
    return [[round(c * 255) if c <= 1 else round(c) for c in rgb] for rgb in colours]


def quantize(weights) -> np.ndarray:
    """``weights`` (any shape, values in [0, 1]) as little-endian uint16 ``round(w * 65535)``.

    Raises:
        ValueError: a value outside [0, 1] (1e-6 of float slack) or not finite.
    """
    w = np.array(weights, dtype=np.float32)  # a copy, scaled in place below
    lo, hi = (float(w.min()), float(w.max())) if w.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"attention weights must be finite and in [0, 1], got [{lo}, {hi}]")
    np.clip(w, 0, 1, out=w)
    np.multiply(w, 65535, out=w)
    np.add(w, 0.5, out=w)
    return w.astype("<u2")


def encode_weights(weights) -> str:
    """:func:`quantize` as base64 (C order)."""
    return base64.b64encode(quantize(weights).tobytes()).decode("ascii")


def pack(header: dict, weights: np.ndarray) -> bytes:
    """One binary payload: the header's JSON length (uint32, little-endian), the JSON (UTF-8,
    padded with spaces to an even length) and the uint16 weights (no base64, no JSON)."""
    text = json.dumps(header).encode("utf-8")
    text += b" " * (len(text) % 2)
    return len(text).to_bytes(4, "little") + text + weights.astype("<u2").tobytes()


def unpack(payload: bytes) -> tuple[dict, np.ndarray]:
    """:func:`pack` read back: (header, uint16 weights, flat)."""
    size = int.from_bytes(payload[:4], "little")
    return (json.loads(payload[4:4 + size]),
            np.frombuffer(payload[4 + size:], dtype="<u2"))


def labels(tokens: list[str]) -> list[str]:
    """``pos:token`` as the figures write them (whitespace made visible)."""
    return [f"{i}:{token_label(t)}" for i, t in enumerate(tokens)]


def model_view_data(patterns, tokens: list[str], scale: str = "log") -> bytes:
    """The payload of :func:`model_view` (:func:`pack`): a header (``n_layers``, ``n_heads``,
    ``n``, ``tokens`` as ``pos:token``, ``scale``, ``floor``, ``lut``, ``causal``) and
    ``patterns`` ``[layer, head, query_pos, key_pos]`` quantized (:func:`quantize`): when every
    weight above the diagonal is 0 (a causal model), only each head's lower triangle, row by row
    (``causal`` true).

    Raises:
        ValueError: not 4-D, not square, a token count that does not match, more than
            :data:`MAX_TOKENS` tokens, an unknown scale, weights outside [0, 1].
    """
    p = np.asarray(patterns)
    if p.ndim != 4 or p.shape[2] != p.shape[3] or p.shape[2] != len(tokens):
        raise ValueError(f"patterns must be [layer, head, n, n] with n = {len(tokens)} tokens, "
                         f"got shape {p.shape}")
    if len(tokens) > MAX_TOKENS:
        raise ValueError(f"{len(tokens)} tokens: the all-heads view draws at most {MAX_TOKENS}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    n = p.shape[2]
    q = quantize(p)
    upper = np.triu_indices(n, 1)
    causal = not q[..., upper[0], upper[1]].any()
    header = {"n_layers": int(p.shape[0]), "n_heads": int(p.shape[1]), "n": int(n),
              "tokens": labels(tokens), "scale": scale, "floor": LOG_FLOOR, "lut": _lut(),
              "causal": bool(causal)}
    if causal:  # only the lower triangle, row by row (half the bytes)
        lower = np.tril_indices(n)
        q = q[..., lower[0], lower[1]]
    return pack(header, q)


_DECODE_JS = r"""
function decode(text) {
  if (Uint8Array.fromBase64) return new Uint16Array(Uint8Array.fromBase64(text).buffer);
  const raw = atob(text), bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return new Uint16Array(bytes.buffer);
}
"""

_MODEL_JS = r"""
export default function(component) {
  const { parentElement, setTriggerValue } = component;
  const payload = component.data;
  if (!payload || !payload.byteLength) return;
  const t0 = performance.now();
  parentElement.querySelectorAll(".mv-wrap").forEach((e) => e.remove());  // a redraw (keeps <style>)
  const bytes = new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  const size = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
  const data = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + size)));
  const start = bytes.byteOffset + 4 + size, count = (bytes.byteLength - 4 - size) / 2;
  const w = start % 2 === 0 ? new Uint16Array(bytes.buffer, start, count)
                            : new Uint16Array(bytes.slice(4 + size).buffer);
  const L = data.n_layers, H = data.n_heads, n = data.n, lut = data.lut;
  const per = data.causal ? n * (n + 1) / 2 : n * n;  // weights stored per head
  const weight = (h, q, k) => data.causal ? (k > q ? 0 : w[h * per + q * (q + 1) / 2 + k])
                                          : w[h * per + q * n + k];
  const gap = Math.max(1, Math.round(n / 24));
  const cellW = n + gap;
  const img = new ImageData(H * cellW, L * cellW);
  const px = new Uint32Array(img.data.buffer);
  px.fill(0xffffffff);
  const packed = new Uint32Array(256);  // the colour map as RGBA words (little-endian ABGR)
  for (let i = 0; i < 256; i++) packed[i] = (255 << 24 | lut[i][2] << 16 | lut[i][1] << 8 | lut[i][0]) >>> 0;
  const index = new Uint8Array(65536);  // weight (uint16) -> colour index, for log and linear
  const logLo = Math.log(data.floor);
  for (let v = 0; v < 65536; v++) {
    const x = v / 65535;
    index[v] = data.scale === "log" ? (x <= data.floor ? 0 : Math.round(255 * (Math.log(x) - logLo) / -logLo))
                                    : Math.round(255 * x);
  }
  const rowW = H * cellW, perHead = data.scale === "per head";
  for (let l = 0; l < L; l++) for (let hd = 0; hd < H; hd++) {
    const base = (l * H + hd) * per;
    let m = 1;  // the head's largest weight on keys after the first (key 0 is the usual sink
    for (let q = 1; q < n; q++) {  // and would leave everything else dark)
      const s = data.causal ? base + q * (q + 1) / 2 : base + q * n;
      for (let k = 1; k <= (data.causal ? q : n - 1); k++) if (w[s + k] > m) m = w[s + k];
    }
    if (n === 1) m = Math.max(1, w[base]);
    const f = 255 / m;
    for (let q = 0; q < n; q++) {
      const o = (l * cellW + q) * rowW + hd * cellW;
      const s = data.causal ? base + q * (q + 1) / 2 : base + q * n;
      const last = data.causal ? q : n - 1;
      for (let k = 0; k <= last; k++) {
        const v = w[s + k];
        px[o + k] = packed[perHead ? Math.min(255, Math.round(v * f)) : index[v]];
      }
      for (let k = last + 1; k < n; k++) px[o + k] = packed[0];
    }
  }
  const wrap = document.createElement("div");
  wrap.className = "mv-wrap";
  parentElement.appendChild(wrap);
  const width = Math.max(300, (parentElement.host || parentElement).clientWidth || wrap.clientWidth || 900);
  const left = 34, top = 18;
  const scale = (width - left - 4) / (H * cellW);
  const canvas = document.createElement("canvas");
  canvas.className = "mv-canvas";
  canvas.width = Math.round(left + H * cellW * scale);
  canvas.height = Math.round(top + L * cellW * scale);
  canvas.setAttribute("data-testid", "model-view");
  wrap.appendChild(canvas);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "white"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  const off = document.createElement("canvas");
  off.width = img.width; off.height = img.height;
  off.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = scale < 1;
  ctx.drawImage(off, left, top, H * cellW * scale, L * cellW * scale);
  ctx.fillStyle = "#222"; ctx.font = "11px sans-serif"; ctx.textBaseline = "middle";
  ctx.textAlign = "center";
  for (let hd = 0; hd < H; hd++) ctx.fillText("H" + hd, left + (hd * cellW + n / 2) * scale, top / 2);
  ctx.textAlign = "right";
  for (let l = 0; l < L; l++) ctx.fillText("L" + l, left - 4, top + (l * cellW + n / 2) * scale);
  const tip = document.createElement("div");
  tip.className = "mv-tip"; tip.setAttribute("data-testid", "model-view-tip");
  wrap.appendChild(tip);
  const at = (ev) => {
    const r = canvas.getBoundingClientRect();
    const x = (ev.clientX - r.left) * canvas.width / r.width - left;
    const y = (ev.clientY - r.top) * canvas.height / r.height - top;
    if (x < 0 || y < 0) return null;
    const hd = Math.floor(x / scale / cellW), l = Math.floor(y / scale / cellW);
    const k = Math.floor(x / scale - hd * cellW), q = Math.floor(y / scale - l * cellW);
    if (hd >= H || l >= L || k >= n || q >= n) return null;
    return { l, hd, q, k, x: ev.clientX - r.left, y: ev.clientY - r.top };
  };
  canvas.addEventListener("mousemove", (ev) => {
    const p = at(ev);
    if (!p) { tip.style.display = "none"; return; }
    const v = weight(p.l * H + p.hd, p.q, p.k) / 65535;
    tip.textContent = "L" + p.l + "H" + p.hd + " \u00b7 query " + data.tokens[p.q] +
      " \u2192 key " + data.tokens[p.k] + " \u00b7 weight " + v.toFixed(4) + " (click to open)";
    tip.style.display = "block";
    tip.style.left = Math.min(p.x + 14, canvas.clientWidth - 260) + "px";
    tip.style.top = (p.y + 14) + "px";
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  canvas.addEventListener("click", (ev) => {
    const p = at(ev);
    if (p) setTriggerValue("clicked", { layer: p.l, head: p.hd });
  });
  // where thumbnail (l, h) is, in canvas pixels (for tests): left + (h * cell, l * cell), n_px wide
  canvas.setAttribute("data-geometry", JSON.stringify({left, top, cell: cellW * scale,
                                                       n_px: n * scale, width: canvas.width}));
  canvas.setAttribute("data-draw-ms", String(Math.round(performance.now() - t0)));
}
"""

_MODEL_CSS = """
.mv-wrap { position: relative; }
.mv-canvas { display: block; cursor: pointer; max-width: 100%; }
.mv-tip { position: absolute; display: none; pointer-events: none; background: #fffff0;
  border: 1px solid #888; padding: 2px 6px; font: 12px sans-serif; color: #111;
  white-space: nowrap; z-index: 10; }
"""

_model = None


def model_view(patterns, tokens: list[str], *, scale: str = "log",
               key: str = "model-view", on_click=None):
    """Draw the all-heads view; returns the component's result (``.clicked`` is ``{"layer",
    "head"}`` on the rerun after a click). ``on_click()`` runs as that rerun's callback."""
    global _model
    if _model is None:
        _model = st.components.v2.component("workbench_model_view", js=_MODEL_JS,
                                            css=_MODEL_CSS)
    return _model(key=key, data=model_view_data(patterns, tokens, scale),
                  on_clicked_change=on_click or (lambda: None))


def token_view_data(pattern, tokens: list[str]) -> dict:
    """The payload of :func:`token_view`: ``pattern`` ``[query_pos, key_pos]`` of one head.

    Raises:
        ValueError: not square, or a token count that does not match.
    """
    p = np.asarray(pattern)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] != len(tokens):
        raise ValueError(f"pattern must be [n, n] with n = {len(tokens)} tokens, got {p.shape}")
    if len(tokens) > MAX_TOKENS:
        raise ValueError(f"{len(tokens)} tokens: the token view draws at most {MAX_TOKENS}")
    return {"n": int(p.shape[0]), "tokens": labels(tokens), "weights": encode_weights(p),
            "lut": _lut()}


_TOKEN_JS = _DECODE_JS + r"""
export default function(component) {
  const { data, parentElement } = component;
  if (!data) return;
  parentElement.querySelectorAll(".tv").forEach((e) => e.remove());  // a redraw (keeps <style>)
  const n = data.n, lut = data.lut;
  const w = decode(data.weights);
  const box = document.createElement("div");
  box.className = "tv";
  parentElement.appendChild(box);
  const info = document.createElement("div");
  info.className = "tv-info"; info.setAttribute("data-testid", "token-view-info");
  info.textContent = "Hover a token: where it attends (top) and what attends to it (bottom).";
  const strips = [["attends to", "tv-out"], ["attended by", "tv-in"]].map(([title, cls]) => {
    const row = document.createElement("div"); row.className = "tv-row " + cls;
    const head = document.createElement("span"); head.className = "tv-title";
    head.textContent = title; row.appendChild(head);
    const spans = data.tokens.map((t, i) => {
      const s = document.createElement("span"); s.className = "tv-tok";
      s.textContent = t.slice(t.indexOf(":") + 1); s.title = t;
      s.setAttribute("data-pos", String(i)); row.appendChild(s); return s;
    });
    box.appendChild(row); return spans;
  });
  box.appendChild(info);
  const colour = (span, v, max) => {
    const c = lut[Math.max(0, Math.min(255, Math.round(255 * v / Math.max(max, 1e-9))))];
    span.style.background = "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
    span.style.color = (c[0] * 0.3 + c[1] * 0.59 + c[2] * 0.11) > 140 ? "#111" : "#fff";
  };
  const show = (i) => {
    const out = [], inn = [];
    for (let j = 0; j < n; j++) { out.push(w[i * n + j] / 65535); inn.push(w[j * n + i] / 65535); }
    const mo = Math.max(...out), mi = Math.max(...inn);
    strips[0].forEach((s, j) => { colour(s, out[j], mo); s.classList.toggle("tv-cur", j === i); });
    strips[1].forEach((s, j) => { colour(s, inn[j], mi); s.classList.toggle("tv-cur", j === i); });
    const top = (v) => v.map((x, j) => [x, j]).sort((a, b) => b[0] - a[0]).slice(0, 3)
      .filter(([x]) => x > 0).map(([x, j]) => data.tokens[j] + " " + x.toFixed(3)).join(", ");
    info.textContent = data.tokens[i] + " attends to: " + (top(out) || "nothing") +
      "; attended by: " + (top(inn) || "nothing");
  };
  strips.forEach((spans) => spans.forEach((s, i) => s.addEventListener("mouseenter", () => show(i))));
  show(n - 1);
}
"""

_TOKEN_CSS = """
.tv { font: 13px sans-serif; }
.tv-row { display: flex; flex-wrap: wrap; gap: 2px; align-items: center; margin: 2px 0 6px; }
.tv-title { width: 80px; color: #555; font-size: 12px; }
.tv-tok { padding: 1px 4px; border-radius: 3px; cursor: default; white-space: pre;
  border: 1px solid transparent; }
.tv-cur { border-color: #e8175d; }
.tv-info { color: #333; font-size: 12px; margin-top: 2px; }
"""

_token = None


def token_view(pattern, tokens: list[str], *, key: str = "token-view"):
    """Draw the token-hover view of one head's pattern (``[query_pos, key_pos]``)."""
    global _token
    if _token is None:
        _token = st.components.v2.component("workbench_token_view", js=_TOKEN_JS,
                                            css=_TOKEN_CSS)
    return _token(key=key, data=token_view_data(pattern, tokens))
