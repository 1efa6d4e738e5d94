// The live view: draws the daemon's damage tiles on a canvas and forwards input.
// No secret lives here: the WebSocket is authorised by the page's session cookie.
"use strict";
(() => {
  const canvas = document.getElementById("screen");
  const ctx = canvas.getContext("2d");
  const stateEl = document.getElementById("state");
  const modeEl = document.getElementById("mode");
  const sizeEl = document.getElementById("size");
  const cursorEl = document.getElementById("cursor");
  const live = {
    frames: 0, connects: 0, canInput: null, connected: false, lastFrameAt: 0, lastError: null,
  };
  window.live = live; // counters and an onframe hook, for tests and benchmarks
  let ws = null;
  let retry = 250;

  function setState(name, text) {
    stateEl.className = "state " + name;
    stateEl.textContent = text;
    live.connected = name === "connected";
  }

  function resize(w, h) {
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    sizeEl.textContent = w + "×" + h;
  }

  async function drawFrame(buffer) {
    const view = new DataView(buffer);
    const seq = view.getUint32(1);
    const w = view.getUint16(5), h = view.getUint16(7), count = view.getUint16(9);
    let at = 11;
    const tiles = [];
    for (let i = 0; i < count; i++) {
      const x = view.getUint16(at), y = view.getUint16(at + 2);
      const len = view.getUint32(at + 8);
      at += 12;
      const blob = new Blob([new Uint8Array(buffer, at, len)], { type: "image/jpeg" });
      at += len;
      tiles.push(createImageBitmap(blob).then((bitmap) => ({ x, y, bitmap })));
    }
    const ready = await Promise.all(tiles);
    resize(w, h);
    for (const t of ready) {
      ctx.drawImage(t.bitmap, t.x, t.y);
      t.bitmap.close();
    }
    live.frames += 1;
    live.lastFrameAt = performance.now();
    send({ type: "ack", seq });
    if (live.onframe) live.onframe();
  }

  function send(message) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }

  function connect() {
    setState("connecting", "connecting…");
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + location.host + "/live/stream");
    ws.binaryType = "arraybuffer";
    let queue = Promise.resolve();
    ws.onopen = () => { retry = 250; live.connects += 1; setState("connected", "live"); };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") {
        const data = event.data;
        queue = queue.then(() => drawFrame(data)).catch((e) => console.error(e));
        return;
      }
      const msg = JSON.parse(event.data);
      if (msg.type === "hello") {
        live.canInput = !!msg.input;
        modeEl.textContent = msg.input ? "you can control this screen"
          : "view only: this link has the read scope, input is off";
        canvas.classList.toggle("readonly", !msg.input);
      } else if (msg.type === "size") {
        resize(msg.width, msg.height);
      } else if (msg.type === "pointer") {
        // In percent of the screen: right whatever size the canvas is shown at.
        cursorEl.hidden = false;
        cursorEl.style.left = (100 * msg.x / canvas.width) + "%";
        cursorEl.style.top = (100 * msg.y / canvas.height) + "%";
      } else if (msg.type === "error") {
        live.lastError = msg.code;
        console.warn("live view:", msg.message);
      }
    };
    ws.onclose = (event) => {
      ws = null;
      if (event.code === 1008 || event.code === 4401) {
        setState("disconnected", "not authorised: open a new link");
        return;
      }
      setState("disconnected", "disconnected, retrying…");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 5000);
    };
  }

  // --- input ---------------------------------------------------------------------------
  function point(event) {
    const rect = canvas.getBoundingClientRect();
    const x = Math.round((event.clientX - rect.left) * canvas.width / rect.width);
    const y = Math.round((event.clientY - rect.top) * canvas.height / rect.height);
    return {
      x: Math.max(0, Math.min(canvas.width - 1, x)),
      y: Math.max(0, Math.min(canvas.height - 1, y)),
    };
  }
  const BUTTONS = ["left", "middle", "right", "back", "forward"];
  let moveQueued = null;
  function flushMove() {
    if (moveQueued) send(moveQueued);
    moveQueued = null;
  }
  canvas.addEventListener("mousemove", (e) => {
    if (!live.canInput) return;
    const first = moveQueued === null;
    moveQueued = { type: "move", ...point(e) };
    if (first) requestAnimationFrame(flushMove);
  });
  canvas.addEventListener("mousedown", (e) => {
    canvas.focus();
    if (!live.canInput) return;
    e.preventDefault();
    flushMove();
    send({ type: "button", action: "down", button: BUTTONS[e.button] || "left", ...point(e) });
  });
  canvas.addEventListener("mouseup", (e) => {
    if (!live.canInput) return;
    e.preventDefault();
    flushMove();
    send({ type: "button", action: "up", button: BUTTONS[e.button] || "left", ...point(e) });
  });
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("wheel", (e) => {
    if (!live.canInput) return;
    e.preventDefault();
    const lines = (d) => (d === 0 ? 0 : Math.sign(d) * Math.max(1, Math.round(Math.abs(d) / 100)));
    send({ type: "wheel", ...point(e), dx: lines(e.deltaX), dy: lines(e.deltaY) });
  }, { passive: false });

  const KEYS = {
    Enter: "Return", Backspace: "BackSpace", Tab: "Tab", Escape: "Escape", Delete: "Delete",
    Insert: "Insert", Home: "Home", End: "End", PageUp: "Prior", PageDown: "Next",
    ArrowLeft: "Left", ArrowRight: "Right", ArrowUp: "Up", ArrowDown: "Down", " ": "space",
    CapsLock: "Caps_Lock", ContextMenu: "Menu", PrintScreen: "Print",
  };
  const MODIFIERS = new Set(["Control", "Shift", "Alt", "Meta", "AltGraph", "OS"]);
  canvas.addEventListener("keydown", (e) => {
    if (!live.canInput || e.isComposing) return;
    if (MODIFIERS.has(e.key)) { e.preventDefault(); return; }
    const combo = e.ctrlKey || e.altKey || e.metaKey;
    if (e.key.length === 1 && !combo) {
      e.preventDefault();
      send({ type: "text", text: e.key });
      return;
    }
    if (combo && e.key.toLowerCase() === "v" && e.ctrlKey && !e.altKey) return; // paste event
    let name = KEYS[e.key] || (/^F\d{1,2}$/.test(e.key) ? e.key : null);
    if (!name && e.key.length === 1) name = e.key.toLowerCase();
    if (!name) return;
    e.preventDefault();
    const mods = [];
    if (e.ctrlKey) mods.push("ctrl");
    if (e.altKey) mods.push("alt");
    if (e.metaKey) mods.push("super");
    if (e.shiftKey && name.length > 1) mods.push("shift");
    send({ type: "key", keys: [...mods, name].join("+") });
  });
  document.addEventListener("paste", (e) => {
    if (document.activeElement !== canvas || !live.canInput) return;
    const text = e.clipboardData && e.clipboardData.getData("text/plain");
    if (text) { e.preventDefault(); send({ type: "paste", text }); }
  });
  // Text from input methods (composition) arrives whole.
  canvas.addEventListener("compositionend", (e) => {
    if (live.canInput && e.data) send({ type: "text", text: e.data });
  });

  document.getElementById("actual").addEventListener("change", (e) => {
    document.body.classList.toggle("actual", e.target.checked);
  });

  connect();
  canvas.focus();
})();
