// The Node worker behind POST /playwright/execute: one per executor, started by the daemon
// as the browser's user with a small clean environment, kept warm between calls.
//
//   node worker.mjs --fd N --cdp HOST:PORT --executor NAME --output-cap BYTES
//
// It holds one Playwright connection to Chromium (connectOverCDP, reconnecting in the
// background when Chromium restarts) and speaks newline-delimited JSON with the daemon over
// the inherited socket N (never stdout, which user code may write to):
//   daemon → worker  {"id", "op": "run", "code", "deadline_ms", "exclude": [target ids],
//                     "target_id"?: the executor's tab, for a worker that replaced another}
//   worker → daemon  {"op": "ready"}
//                    {"op": "tab", "id", "tab": {"created", "target_id"}}
//                    {"op": "out", "id", "stream": "stdout"|"stderr", "data"}
//                    {"op": "done", "id", "success", "result"?, "error"?, "tab"?,
//                     "unavailable"?, "truncated": {"stdout", "stderr"}}
// Calls arrive one at a time; the daemon enforces the timeout by killing this process.

import { Console } from 'node:console';
import http from 'node:http';
import { SourceMap } from 'node:module';
import net from 'node:net';
import { Writable } from 'node:stream';
import vm from 'node:vm';

import esbuild from 'esbuild';
import { chromium } from 'playwright-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) =>
    (arg.startsWith('--') ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []));
const CDP = args.cdp;
const EXECUTOR = args.executor || 'default';
const OUTPUT_CAP = Number(args['output-cap'] || 1 << 20);
const RESULT_CAP = Number(args['result-cap'] || 8 << 20);
const FILENAME = 'user-code.ts';
// The user's code is wrapped on one line of its own, so its line N is line N + 1 here.
const HEAD = '(async function (page, context, browser, console) {\n';
const TAIL = '\n})';

const channel = new net.Socket({ fd: Number(args.fd), readable: true, writable: true });
const send = (message) => channel.write(JSON.stringify(message) + '\n');

// --- the browser connection -----------------------------------------------------------

let browser = null;
let connecting = null;
let lastError = '';
let ownPage = null; // a named executor's tab
const targetIds = new WeakMap(); // Page → CDP target id

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let attempted; // resolves once the first connection attempt is over, either way
const firstAttempt = new Promise((resolve) => { attempted = resolve; });

async function connectLoop() {
  let delay = 50;
  for (;;) {
    try {
      const connected = await chromium.connectOverCDP(`http://${CDP}`, { timeout: 10_000 });
      connected.on('disconnected', () => {
        if (browser === connected) {
          browser = null;
          ownPage = null;
          ensureConnecting(); // Chromium restarts: be warm again before the next call
        }
      });
      browser = connected;
      lastError = '';
      attempted();
      return connected;
    } catch (error) {
      lastError = String(error?.message ?? error).split('\n')[0];
      attempted();
      await sleep(delay);
      delay = Math.min(delay * 2, 500);
    }
  }
}

function ensureConnecting() {
  if (!connecting) connecting = connectLoop().finally(() => { connecting = null; });
  return connecting;
}

class Unavailable extends Error {}

async function connectedBrowser(deadline) {
  if (browser?.isConnected()) return browser;
  const left = deadline - Date.now();
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Unavailable(
      `Chromium's DevTools at ${CDP} did not answer${lastError ? ` (${lastError})` : ''}`)),
    Math.max(left, 0));
  });
  try {
    return await Promise.race([ensureConnecting(), expired]);
  } finally {
    clearTimeout(timer);
  }
}

function getJson(path) {
  return new Promise((resolve, reject) => {
    const request = http.get(`http://${CDP}${path}`, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => { body += chunk; });
      response.on('end', () => {
        try { resolve(JSON.parse(body)); } catch (error) { reject(error); }
      });
    });
    request.on('error', reject);
    request.setTimeout(5000, () => request.destroy(new Error(`GET ${path} timed out`)));
  });
}

async function targetIdOf(page) {
  let id = targetIds.get(page);
  if (id === undefined) {
    const session = await page.context().newCDPSession(page);
    try {
      id = (await session.send('Target.getTargetInfo')).targetInfo.targetId;
    } finally {
      await session.detach().catch(() => {});
    }
    targetIds.set(page, id);
  }
  return id;
}

async function pagesById(connected) {
  const byId = new Map();
  for (const context of connected.contexts()) {
    for (const page of context.pages()) {
      try {
        byId.set(await targetIdOf(page), page);
      } catch {
        // closed while we looked
      }
    }
  }
  return byId;
}

// The default executor: the tab in front. Chromium lists its pages most recently shown
// first (/json/list); tabs owned by named executors are skipped.
async function frontPage(connected, exclude) {
  const skip = new Set(exclude);
  const listed = (await getJson('/json/list')).filter((t) => t.type === 'page' && !skip.has(t.id));
  const byId = await pagesById(connected);
  for (const target of listed) {
    const page = byId.get(target.id);
    if (page && !page.isClosed()) return { page, created: false, targetId: target.id };
  }
  for (const [id, page] of byId) {
    if (!skip.has(id) && !page.isClosed()) return { page, created: false, targetId: id };
  }
  const context = connected.contexts()[0] ?? await connected.newContext();
  const page = await context.newPage();
  return { page, created: true, targetId: await targetIdOf(page) };
}

// A named executor: its own background tab in the default context, opened on first use;
// a worker that replaces a stopped one takes over the tab the executor already has.
async function executorPage(connected, adopt) {
  if (ownPage && !ownPage.isClosed()) {
    return { page: ownPage, created: false, targetId: await targetIdOf(ownPage) };
  }
  if (adopt) {
    const page = (await pagesById(connected)).get(adopt);
    if (page && !page.isClosed()) {
      ownPage = page;
      return { page, created: false, targetId: adopt };
    }
  }
  const context = connected.contexts()[0];
  const seen = [];
  const collect = (page) => seen.push(page);
  context.on('page', collect);
  try {
    const session = await connected.newBrowserCDPSession();
    let targetId;
    try {
      ({ targetId } = await session.send('Target.createTarget',
        { url: 'about:blank', background: true }));
    } finally {
      await session.detach().catch(() => {});
    }
    for (let waited = 0; waited < 10_000; waited += 10) {
      for (const page of [...context.pages(), ...seen]) {
        if ((await targetIdOf(page).catch(() => null)) === targetId) {
          ownPage = page;
          return { page, created: true, targetId };
        }
      }
      await sleep(10);
    }
    throw new Error(`the new tab ${targetId} did not appear`);
  } finally {
    context.off('page', collect);
  }
}

// --- the user's code --------------------------------------------------------------------

const compiled = new Map(); // code → {script, map}; a small cache, oldest dropped first

class UserSyntaxError extends Error {}

async function compile(code) {
  const cached = compiled.get(code);
  if (cached) return cached;
  let output;
  try {
    output = await esbuild.transform(HEAD + code + TAIL, {
      loader: 'ts', sourcemap: 'external', sourcefile: FILENAME, target: 'es2022',
    });
  } catch (error) {
    const first = error.errors?.[0];
    if (!first) throw error;
    const where = first.location;
    const line = where ? Math.max(where.line - 1, 1) : null;
    const column = where ? where.column + 1 : null;
    const message = `SyntaxError: ${first.text}` + (where ? ` (line ${line}, column ${column})` : '');
    const detail = where ? `${message}\n  ${line} | ${where.lineText}\n  ${' '.repeat(String(line).length)} | ${' '.repeat(where.column)}^\n` : `${message}\n`;
    throw Object.assign(new UserSyntaxError(message), { detail, line, column });
  }
  let script;
  try {
    script = new vm.Script(output.code, { filename: FILENAME });
  } catch (error) {
    throw Object.assign(new UserSyntaxError(`SyntaxError: ${error.message}`),
      { detail: `SyntaxError: ${error.message}\n` });
  }
  const entry = { script, map: new SourceMap(JSON.parse(output.map)) };
  compiled.set(code, entry);
  if (compiled.size > 64) compiled.delete(compiled.keys().next().value);
  return entry;
}

// Stack frames in the user's code point at the transpiled text: map them back.
function userStack(error, map) {
  let stack = typeof error?.stack === 'string' ? error.stack : String(error);
  // The worker's own frames and Node's internals say nothing about the user's code.
  stack = stack.split('\n')
    .filter((line) => !/^\s+at .*(worker\.mjs|node:internal)/.test(line)).join('\n');
  if (!map) return stack;
  const frame = new RegExp(`${FILENAME.replace('.', '\\.')}:(\\d+):(\\d+)`, 'g');
  return stack.replace(frame, (whole, line, column) => {
    const entry = map.findEntry(Number(line) - 1, Number(column) - 1);
    if (!entry || entry.originalLine === undefined) return whole;
    return `${FILENAME}:${Math.max(entry.originalLine, 1)}:${entry.originalColumn + 1}`;
  });
}

// JSON with clear errors instead of silent losses: functions, symbols, bigints, cycles
// and class instances (a Page, a Map) are refused with the path where they were found.
function plain(value, path, seen) {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'number') return Number.isFinite(value) ? value : null;
  if (typeof value === 'bigint') throw new TypeError(`${path} is a BigInt`);
  if (typeof value === 'function') throw new TypeError(`${path} is a function`);
  if (typeof value === 'symbol') throw new TypeError(`${path} is a symbol`);
  if (typeof value !== 'object') return null; // undefined inside an array
  if (value instanceof Date) return value.toJSON();
  const proto = Object.getPrototypeOf(value);
  if (!Array.isArray(value) && proto !== Object.prototype && proto !== null) {
    const kind = value.constructor?.name?.replace(/^_+/, ''); // playwright's _Page is a Page
    throw new TypeError(`${path} is ${kind ? `a ${kind}` : 'an exotic object'}, not plain data`);
  }
  if (typeof value.toJSON === 'function') return plain(value.toJSON(), path, seen);
  if (seen.has(value)) throw new TypeError(`${path} refers back to itself (a cycle)`);
  seen.add(value);
  try {
    if (Array.isArray(value)) return value.map((item, i) => plain(item, `${path}[${i}]`, seen));
    const out = {};
    for (const [key, item] of Object.entries(value)) {
      if (item === undefined || typeof item === 'function' || typeof item === 'symbol') continue;
      out[key] = plain(item, `${path}.${key}`, seen);
    }
    return out;
  } finally {
    seen.delete(value);
  }
}

let current = null; // the call running now: {id, bytes, truncated, done}

function outputStream(call, stream) {
  return new Writable({
    decodeStrings: false,
    write(chunk, _encoding, callback) {
      if (!call.done) {
        let text = String(chunk);
        const room = OUTPUT_CAP - call.bytes[stream];
        if (Buffer.byteLength(text) > room) {
          call.truncated[stream] = true;
          text = Buffer.from(text).subarray(0, Math.max(room, 0)).toString();
        }
        if (text) {
          call.bytes[stream] += Buffer.byteLength(text);
          send({ op: 'out', id: call.id, stream, data: text });
        }
      }
      callback();
    },
  });
}

function report(call, body) {
  call.done = true;
  if (current === call) current = null;
  send({ op: 'done', id: call.id, truncated: call.truncated, ...body });
}

async function run(message) {
  const call = {
    id: message.id, done: false,
    bytes: { stdout: 0, stderr: 0 }, truncated: { stdout: false, stderr: false },
  };
  current = call;
  const userConsole = new Console({
    stdout: outputStream(call, 'stdout'), stderr: outputStream(call, 'stderr'), colorMode: false,
  });
  let entry;
  try {
    entry = await compile(message.code);
  } catch (error) {
    if (error instanceof UserSyntaxError) {
      userConsole.error(error.detail.trimEnd());
      return report(call, { success: false, error: error.message });
    }
    throw error;
  }
  let tab;
  try {
    const connected = await connectedBrowser(message.deadline_ms);
    tab = EXECUTOR === 'default'
      ? await frontPage(connected, message.exclude ?? [])
      : await executorPage(connected, message.target_id);
  } catch (error) {
    if (error instanceof Unavailable) return report(call, { unavailable: error.message });
    userConsole.error(userStack(error, null));
    return report(call, { success: false, error: `could not bind a page: ${error.message}` });
  }
  const tabInfo = { created: tab.created, target_id: tab.targetId };
  send({ op: 'tab', id: call.id, tab: tabInfo }); // known to the daemon even if the call overruns
  let value;
  try {
    const fn = entry.script.runInThisContext();
    if (typeof fn !== 'function') throw new TypeError('the code did not compile to a function body');
    value = await fn(tab.page, tab.page.context(), tab.page.context().browser() ?? browser, userConsole);
  } catch (error) {
    userConsole.error(userStack(error, entry.map));
    const text = error instanceof Error ? error.message : String(error);
    return report(call, { success: false, error: text || String(error), tab: tabInfo });
  }
  if (value === undefined) return report(call, { success: true, tab: tabInfo });
  let result;
  try {
    result = plain(value, 'result', new Set());
  } catch (error) {
    return report(call, {
      success: false, tab: tabInfo,
      error: `the returned value cannot be sent as JSON: ${error.message}`,
    });
  }
  const size = Buffer.byteLength(JSON.stringify(result));
  if (size > RESULT_CAP) {
    return report(call, {
      success: false, tab: tabInfo,
      error: `the returned value is ${size} bytes of JSON, more than the ${RESULT_CAP}-byte limit`,
    });
  }
  return report(call, { success: true, result, tab: tabInfo });
}

// Errors that escape the user's code later (a rejected promise nobody awaited, a throw in
// a timer) are reported to the call running now, else to the worker's log; never fatal.
function stray(kind) {
  return (error) => {
    const text = `${kind}: ${error?.stack ?? error}\n`;
    if (current && !current.done) {
      send({ op: 'out', id: current.id, stream: 'stderr', data: text });
    } else {
      process.stderr.write(text);
    }
  };
}
process.on('uncaughtException', stray('uncaught exception'));
process.on('unhandledRejection', stray('unhandled rejection'));

// --- the channel --------------------------------------------------------------------------

let buffered = '';
channel.setEncoding('utf8');
channel.on('data', (chunk) => {
  buffered += chunk;
  let newline;
  while ((newline = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, newline);
    buffered = buffered.slice(newline + 1);
    if (!line) continue;
    const message = JSON.parse(line);
    if (message.op === 'run') {
      run(message).catch((error) => send({
        op: 'done', id: message.id, success: false,
        error: `internal error in the worker: ${error?.message ?? error}`,
      }));
    }
  }
});
// The daemon went away (or closed us): nothing is left to serve.
channel.on('end', () => process.exit(0));
channel.on('error', () => process.exit(0));

// Ready once warm: connected, or Chromium did not answer the first attempt (it may be
// restarting; calls wait for the background reconnection within their timeout).
ensureConnecting();
firstAttempt.then(() => send({ op: 'ready' }));
