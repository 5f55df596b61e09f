// textsketch page: encode an image on this encoder, show what the payload carries, decode it through the
// encoder's forwarded /decode. Plain JavaScript, no build step, no third-party code; every request goes
// to this origin (relative URLs, so the page also works behind a path prefix).
// The token typed in stays in this page's memory (the input field): never stored, never in a cookie.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const MSGPACK = { "Content-Type": "application/msgpack" };
  let file = null;
  let objectUrls = [];

  class ServiceError extends Error {}

  // --- talking to the services -------------------------------------------------------------

  function authHeaders() {
    const token = $("token").value.trim();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  // fetch() that turns every failure into a ServiceError with a message a person can read.
  async function call(path, options) {
    let response;
    try {
      response = await fetch(path, {
        ...options,
        headers: { ...authHeaders(), ...(options.headers || {}) },
        credentials: "omit",
        cache: "no-store",
      });
    } catch (error) {
      throw new ServiceError(`The encoder did not answer ${path} (${error.message}). Is it running?`);
    }
    if (!response.ok) throw new ServiceError(await describeError(path, response));
    return response;
  }

  // Both services answer errors as {"error": code, "detail": message}; answers the encoder relays from
  // the decoder carry X-Upstream: decoder.
  async function describeError(path, response) {
    const service = response.headers.get("X-Upstream") === "decoder" ? "The decoder" : "The encoder";
    const text = await response.text();
    let code = "";
    let detail = text.trim().slice(0, 500);
    try {
      const body = JSON.parse(text);
      code = body.error || "";
      if (body.detail !== undefined && body.detail !== null) {
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      }
    } catch (_) {
      // not JSON (a proxy's page, uvicorn's plain 503): keep the text
    }
    let message = `${service} answered ${response.status}${code ? ` ${code}` : ""} to /${path.split("?")[0]}: ` +
      `${detail || response.statusText}`;
    if (response.status === 401) message += "\nType the services' token into the Token field.";
    const retry = response.headers.get("Retry-After");
    if (retry) message += `\nRetry after ${retry} s.`;
    return message;
  }

  // --- a minimal msgpack reader, for the /candidates answer {indices, format, images} ---------

  function unpack(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const utf8 = new TextDecoder();
    let pos = 0;
    const need = (n) => {
      if (pos + n > bytes.length) throw new Error("truncated msgpack answer");
    };
    const u8 = () => { need(1); return view.getUint8(pos++); };
    const u16 = () => { need(2); const v = view.getUint16(pos); pos += 2; return v; };
    const u32 = () => { need(4); const v = view.getUint32(pos); pos += 4; return v; };
    const take = (n) => { need(n); const out = bytes.subarray(pos, pos + n); pos += n; return out; };
    const array = (n) => Array.from({ length: n }, () => value());
    const map = (n) => {
      const out = {};
      for (let i = 0; i < n; i++) out[value()] = value();
      return out;
    };
    function value() {
      const b = u8();
      if (b <= 0x7f) return b;
      if ((b & 0xf0) === 0x80) return map(b & 0x0f);
      if ((b & 0xf0) === 0x90) return array(b & 0x0f);
      if ((b & 0xe0) === 0xa0) return utf8.decode(take(b & 0x1f));
      switch (b) {
        case 0xc0: return null;
        case 0xc2: return false;
        case 0xc3: return true;
        case 0xc4: return take(u8());
        case 0xc5: return take(u16());
        case 0xc6: return take(u32());
        case 0xcc: return u8();
        case 0xcd: return u16();
        case 0xce: return u32();
        case 0xd9: return utf8.decode(take(u8()));
        case 0xda: return utf8.decode(take(u16()));
        case 0xdc: return array(u16());
        case 0xde: return map(u16());
        default: throw new Error(`unexpected msgpack byte 0x${b.toString(16)}`);
      }
    }
    return value();
  }

  // --- showing things ------------------------------------------------------------------------

  function objectUrl(blob) {
    const url = URL.createObjectURL(blob);
    objectUrls.push(url);
    return url;
  }

  function showImage(id, blob) {
    const img = $(id);
    img.src = objectUrl(blob);
    img.hidden = false;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showError(error) {
    const box = $("error");
    box.textContent = error instanceof ServiceError ? error.message : `Unexpected error in the page: ${error}`;
    box.hidden = false;
    document.body.dataset.state = "error";
  }

  function clearResults() {
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = [];
    for (const id of ["sketch", "reconstruction"]) {
      $(id).removeAttribute("src");
      $(id).hidden = true;
    }
    for (const id of ["sketch-note", "reconstruction-note", "timings", "candidates-note"]) $(id).textContent = "";
    $("candidate-list").replaceChildren();
    $("error").hidden = true;
    $("payload").hidden = true;
    $("candidates-view").hidden = true;
    $("download").removeAttribute("href");
  }

  function choose(picked) {
    if (!picked) return;
    file = picked;
    clearResults();
    const img = $("original");
    if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
    img.dataset.url = URL.createObjectURL(picked);
    img.src = img.dataset.url;
    img.hidden = false;
    $("original-note").textContent = `${picked.name}, ${picked.size.toLocaleString("en")} bytes`;
    $("drop-label").textContent = `${picked.name}. Drop another image, or`;
    $("encode").disabled = false;
    setStatus("Ready: choose the options, then Encode and decode.");
    document.body.dataset.state = "idle";
  }

  function showPayload(payload, info, name) {
    const total = payload.byteLength;
    $("payload-bytes").textContent = total.toLocaleString("en");
    $("payload-bytes").dataset.bytes = String(total);
    $("bpp").textContent = info.bpp.toFixed(5);
    $("prompt-bytes").textContent = `${info.prompt_bytes} B`;
    $("sketch-bytes").textContent = `${info.sketch_bytes} B`;
    $("overhead-bytes").textContent = `${info.overhead_bytes} B`;
    $("format").textContent = `${info.mode}, ${info.profile}`;
    $("sizes").textContent = `${info.width}×${info.height}, ${info.working_width}×${info.working_height}`;
    $("candidate").textContent = info.candidate ? String(info.candidate) : "none";
    $("prompt-text").textContent = info.prompt_text;
    $("token-ids").textContent = info.token_ids.join(" ");
    $("bar-prompt").style.width = `${(100 * info.prompt_bytes) / total}%`;
    $("bar-sketch").style.width = `${(100 * info.sketch_bytes) / total}%`;
    $("bar-container").style.width = `${(100 * info.overhead_bytes) / total}%`;
    const link = $("download");
    link.href = objectUrl(new Blob([payload], { type: "application/msgpack" }));
    link.download = `${name.replace(/\.[^.]*$/, "") || "image"}.tsk`;
    $("payload").hidden = false;
  }

  function showCandidates(answer, chosen) {
    const list = $("candidate-list");
    const type = answer.format === "jpeg" ? "image/jpeg" : `image/${answer.format}`;
    answer.indices.forEach((index, i) => {
      const figure = document.createElement("figure");
      figure.dataset.index = String(index);
      const caption = document.createElement("figcaption");
      caption.textContent = index === chosen ? `candidate ${index}: chosen` : `candidate ${index}`;
      if (index === chosen) figure.classList.add("chosen");
      const img = document.createElement("img");
      img.alt = caption.textContent;
      img.src = objectUrl(new Blob([answer.images[i]], { type }));
      const frame = document.createElement("div");
      frame.className = "frame";
      frame.append(img);
      figure.append(caption, frame);
      list.append(figure);
    });
    $("candidates-note").textContent = chosen
      ? `the encoder chose ${chosen} of ${answer.indices.length} (closest to the original by CLIP)`
      : "selection fell back: the payload names no candidate";
    $("candidates-view").hidden = false;
  }

  // --- the run -------------------------------------------------------------------------------

  function encodeQuery() {
    const params = new URLSearchParams({ mode: $("mode").value });
    if ($("mode").value === "pics") {
      if ($("sketch-by").value === "bytes") params.set("target_bytes", $("target-bytes").value);
      else params.set("quality", $("quality").value);
    }
    if ($("prompt-source").value) params.set("prompt_source", $("prompt-source").value);
    if ($("text").value.trim()) params.set("text", $("text").value.trim());
    if ($("candidates").value !== "0") params.set("candidates", $("candidates").value);
    return params;
  }

  async function run() {
    clearResults();
    $("encode").disabled = true;
    document.body.dataset.state = "busy";
    const seconds = (start) => ((performance.now() - start) / 1000).toFixed(1);
    const times = [];
    try {
      setStatus("Encoding…");
      let start = performance.now();
      const encoded = await call(`encode?${encodeQuery()}`, {
        method: "POST",
        body: file,
        headers: { "Content-Type": file.type || "application/octet-stream" },
      });
      const payload = new Uint8Array(await encoded.arrayBuffer());
      times.push(`encode ${seconds(start)} s`);
      const selection = encoded.headers.get("X-Candidate-Selection") || "off";

      const info = await (await call("inspect", { method: "POST", body: payload, headers: MSGPACK })).json();
      showPayload(payload, info, file.name);
      if (info.mode === "PICS") {
        const sketch = await call("sketch", { method: "POST", body: payload, headers: MSGPACK });
        showImage("sketch", await sketch.blob());
        $("sketch-note").textContent = `${info.sketch_bytes} bytes, drawn at ${info.working_width}×${info.working_height}`;
      } else {
        $("sketch-note").textContent = "none: PIC sends the prompt only";
      }

      setStatus("Decoding (the decoder draws the image)…");
      start = performance.now();
      const decoded = await call("decode", { method: "POST", body: payload, headers: { ...MSGPACK, Accept: "image/png" } });
      showImage("reconstruction", await decoded.blob());
      times.push(`decode ${seconds(start)} s`);
      $("reconstruction-note").textContent = info.candidate
        ? `candidate ${info.candidate}, ${info.width}×${info.height}` : `${info.width}×${info.height}`;

      const n = Number($("candidates").value);
      if (n > 1 && selection !== "off") {
        setStatus(`Rendering the ${n} candidates…`);
        start = performance.now();
        const answer = await call(`candidates?n=${n}&format=png`, { method: "POST", body: payload, headers: MSGPACK });
        showCandidates(unpack(new Uint8Array(await answer.arrayBuffer())), info.candidate);
        times.push(`candidates ${seconds(start)} s`);
      }
      $("timings").textContent = times.join(", ");
      setStatus(`Done: ${payload.byteLength} bytes (${info.bpp.toFixed(5)} bpp).`);
      document.body.dataset.state = "done";
    } catch (error) {
      setStatus("Stopped.");
      showError(error);
    } finally {
      $("encode").disabled = file === null;
    }
  }

  // --- wiring --------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("file").addEventListener("change", (event) => choose(event.target.files[0]));
    const drop = $("drop");
    drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      choose(event.dataTransfer.files[0]);
    });
    drop.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") $("file").click();
    });
    $("quality").addEventListener("input", () => { $("quality-value").textContent = $("quality").value; });
    $("sketch-by").addEventListener("change", () => {
      const bytes = $("sketch-by").value === "bytes";
      $("quality-field").hidden = bytes;
      $("target-field").hidden = !bytes;
    });
    $("mode").addEventListener("change", () => {
      const pics = $("mode").value === "pics";
      $("sketch-by").disabled = $("quality").disabled = $("target-bytes").disabled = !pics;
    });
    $("controls").addEventListener("submit", (event) => {
      event.preventDefault();
      if (file) run();
    });
    document.body.dataset.state = "idle";
  });
})();
