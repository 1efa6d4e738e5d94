"""The script injected into every page (in an isolated world, invisible to the page's own
scripts) that reports clicks, key presses and settled scrolls through a CDP binding.

Key presses in password, credit-card (`autocomplete="cc-*"`) and one-time-code fields are
never reported, not even as a redacted event. The payloads are JSON; the daemon checks
their shape (`mapping.interaction`) before anything is published, so a page that finds a
way to call the binding can only produce well-formed, size-capped events.
"""

from __future__ import annotations

BINDING = "__browserAgentTelemetry"
WORLD = "browser-agent-telemetry"

# Kept small and free of dependencies; the binding and the settle delay are filled in.
_SOURCE = r"""
(() => {
  const send = globalThis[%(binding)s];
  if (typeof send !== 'function' || globalThis.__browserAgentTelemetryInstalled) return;
  globalThis.__browserAgentTelemetryInstalled = true;
  const post = (o) => { try { send(JSON.stringify(o)); } catch (e) {} };
  const cssEscape = (s) => (window.CSS && CSS.escape) ? CSS.escape(s) : s;
  const selector = (el) => {
    if (!el || el.nodeType !== 1) return '';
    const parts = [];
    for (let n = el; n && n.nodeType === 1 && parts.length < 8; n = n.parentElement) {
      const tag = n.tagName.toLowerCase();
      if (n.id) { parts.unshift(tag + '#' + cssEscape(n.id)); break; }
      let part = tag;
      const parent = n.parentElement;
      if (parent) {
        const same = Array.prototype.filter.call(parent.children, c => c.tagName === n.tagName);
        if (same.length > 1) part += ':nth-of-type(' + (same.indexOf(n) + 1) + ')';
      }
      parts.unshift(part);
      if (tag === 'body' || tag === 'html') break;
    }
    return parts.join(' > ');
  };
  const sensitive = (el) => {
    if (!el || el.nodeType !== 1) return false;
    const type = (el.getAttribute('type') || '').toLowerCase();
    if (el.tagName === 'INPUT' && type === 'password') return true;
    const auto = (el.getAttribute('autocomplete') || '').toLowerCase().split(/\s+/);
    return auto.some(t => t.startsWith('cc-') || t === 'one-time-code' ||
                          t === 'current-password' || t === 'new-password');
  };
  const target = (e) => {
    const path = e.composedPath ? e.composedPath() : [];
    return (path.length && path[0].nodeType === 1) ? path[0] : e.target;
  };
  addEventListener('click', (e) => {
    const el = target(e);
    if (!el || el.nodeType !== 1) return;
    const text = (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA') ? ''
      : (el.innerText || el.textContent || '').trim().slice(0, 200);
    post({kind: 'click', x: Math.round(e.clientX), y: Math.round(e.clientY),
          selector: selector(el), tag: el.tagName, text});
  }, {capture: true, passive: true});
  addEventListener('keydown', (e) => {
    const el = target(e);
    if (sensitive(el) || sensitive(document.activeElement)) return;
    const focus = (el && el.nodeType === 1) ? el : document.activeElement;
    post({kind: 'key', key: String(e.key).slice(0, 32), selector: selector(focus),
          tag: focus && focus.tagName ? focus.tagName : ''});
  }, {capture: true, passive: true});
  const positions = new WeakMap();
  const where = (t) => (t === document || t === document.documentElement || t === window)
    ? [Math.round(scrollX), Math.round(scrollY)]
    : [Math.round(t.scrollLeft), Math.round(t.scrollTop)];
  const pending = new Map();
  const settle = (key) => {
    const p = pending.get(key);
    pending.delete(key);
    const to = where(key);
    positions.set(key, to);
    if (to[0] === p.from[0] && to[1] === p.from[1]) return;
    const el = (key === document) ? document.documentElement : key;
    post({kind: 'scroll', from_x: p.from[0], from_y: p.from[1], to_x: to[0], to_y: to[1],
          target_selector: selector(el)});
  };
  positions.set(document, where(document));
  addEventListener('scroll', (e) => {
    const key = (e.target === document || e.target === window) ? document : e.target;
    let p = pending.get(key);
    if (!p) {
      p = {from: positions.get(key) || where(key), timer: 0};
      pending.set(key, p);
    }
    clearTimeout(p.timer);
    p.timer = setTimeout(() => settle(key), %(settle_ms)d);
  }, {capture: true, passive: true});
})();
"""

SCROLL_SETTLE_MS = 150


def source() -> str:
    return _SOURCE % {"binding": repr(BINDING), "settle_ms": SCROLL_SETTLE_MS}
