// sandboxd web console: plain JavaScript, no framework, no build step. Served from the
// sandboxd binary at /console (src/orchestrator/http/console.rs).
//
// Credentials: entered once on the sign-in form, kept in sessionStorage (this tab only,
// gone when it closes), sent as the API expects (OPEN-SANDBOX-API-KEY or Authorization:
// Bearer) on every fetch/XHR, never put in a URL. Streams (metrics SSE) are read with fetch()
// so they carry the headers too; the terminal's WebSocket, which cannot carry headers, uses a
// one-time ticket from POST /v1/sandboxes/{id}/tickets (ARCHITECTURE.md, "Web console").
'use strict';

const CRED_KEY = 'sandboxd.console.credential';
const EXECD_PORT = 44772;
const REFRESH_MS = 3000;

// ---- small DOM helpers (no innerHTML: every text goes in as text) ----
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}
const view = () => document.getElementById('view');
// Replaces an element's children, leaving out the null/false of conditional parts.
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}
function mount(...nodes) {
  cleanup();
  fill(view(), ...nodes);
}
function toast(text, bad) {
  const t = document.getElementById('toast');
  t.textContent = text;
  t.className = bad ? 'bad' : '';
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

// Things the current page runs (timers, streams, sockets), stopped when it is left.
let running = [];
function onLeave(stop) { running.push(stop); }
function cleanup() {
  for (const stop of running) { try { stop(); } catch (_) { /* already stopped */ } }
  running = [];
}

// ---- credentials and API calls ----
function credential() {
  try { return JSON.parse(sessionStorage.getItem(CRED_KEY) || 'null'); } catch (_) { return null; }
}
function authHeaders() {
  const c = credential();
  if (!c || !c.secret) return {};
  return c.kind === 'token' ? { Authorization: 'Bearer ' + c.secret } : { 'OPEN-SANDBOX-API-KEY': c.secret };
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = authHeaders();
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
  const resp = await fetch(path.startsWith('/') ? path : '/v1/' + path, init);
  return answer(resp);
}
async function answer(resp) {
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!resp.ok) {
    if (resp.status === 401 && location.hash !== '#/login') { go('#/login'); }
    const code = data && data.code ? data.code : 'HTTP_' + resp.status;
    const message = data && data.message ? data.message : (typeof data === 'string' ? data : resp.statusText);
    throw new ApiError(resp.status, code, message);
  }
  return data;
}
const v1 = (path) => '/v1' + path;
const execd = (id) => v1('/sandboxes/' + encodeURIComponent(id) + '/proxy/' + EXECD_PORT);

// ---- formatting ----
function age(iso) {
  if (!iso) return '';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm';
  if (s < 86400) return Math.floor(s / 3600) + 'h' + String(Math.floor((s % 3600) / 60)).padStart(2, '0') + 'm';
  return Math.floor(s / 86400) + 'd';
}
function until(iso) {
  if (!iso) return 'never';
  const s = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (s <= 0) return 'due';
  if (s < 3600) return 'in ' + Math.ceil(s / 60) + 'm';
  return 'in ' + Math.floor(s / 3600) + 'h' + String(Math.floor((s % 3600) / 60)).padStart(2, '0') + 'm';
}
function bytes(n) {
  if (n < 1024) return n + ' B';
  const u = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + ' ' + u[i];
}
function stateBadge(state) {
  return h('span', { class: 'badge state-' + String(state || 'unknown').toLowerCase() }, state || '?');
}
function origin(sb) {
  if (sb.templateName || sb.templateId) {
    return (sb.templateName || sb.templateId) + (sb.templateVersion ? '@' + sb.templateVersion : '');
  }
  return sb.image && sb.image.uri ? sb.image.uri : (sb.snapshotId ? 'snapshot ' + sb.snapshotId : '');
}
function errorBox(e) {
  return h('p', { class: 'error' }, e.code ? e.code + ': ' : '', e.message || String(e));
}

// ---- routing ----
// Shows the navigation and the sign-out button only with a credential; whether there is one.
function syncChrome() {
  const signedIn = credential() !== null;
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('logout').hidden = !signedIn;
  return signedIn;
}
function go(hash) { if (location.hash === hash) route(); else location.hash = hash; }
function route() {
  const hash = location.hash || '#/sandboxes';
  const parts = hash.slice(2).split('/').map(decodeURIComponent);
  const signedIn = syncChrome();
  if (!signedIn && parts[0] !== 'login') return go('#/login');
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === parts[0] || (parts[0] === 'sandbox' && a.dataset.nav === 'sandboxes'));
  }
  document.body.dataset.page = parts[0] === 'sandboxes' && parts[1] === 'new' ? 'create' : parts[0];
  switch (parts[0]) {
    case 'login': return loginPage();
    case 'sandboxes': return parts[1] === 'new' ? createPage() : listPage();
    case 'sandbox': return sandboxPage(parts[1], parts[2] || 'terminal');
    case 'templates': return templatesPage();
    case 'pools': return poolsPage();
    default: return go('#/sandboxes');
  }
}

// ---- sign in ----
function loginPage() {
  const kind = h('select', { id: 'cred-kind', name: 'kind' },
    h('option', { value: 'apikey' }, 'API key (OPEN-SANDBOX-API-KEY)'),
    h('option', { value: 'token' }, 'User token (Authorization: Bearer)'),
    h('option', { value: 'none' }, 'None (a sandboxd in dev mode)'));
  const secret = h('input', { id: 'cred-secret', name: 'secret', type: 'password', autocomplete: 'off', placeholder: 'paste the key or token' });
  const status = h('p', { class: 'muted' });
  const form = h('form', { class: 'card narrow', id: 'login-form', onsubmit: async (ev) => {
    ev.preventDefault();
    const c = { kind: kind.value, secret: kind.value === 'none' ? '' : secret.value.trim() };
    sessionStorage.setItem(CRED_KEY, JSON.stringify(c));
    status.textContent = 'checking…';
    try {
      await api('GET', v1('/tokens/current'));
      secret.value = '';
      showWho();
      go('#/sandboxes');
    } catch (e) {
      sessionStorage.removeItem(CRED_KEY);
      syncChrome();
      fill(status, errorBox(e));
    }
  } },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'The credential stays in this tab (session storage) and is sent as a header on every call; it never goes into a URL.'),
    h('label', {}, 'Credential', kind),
    h('label', {}, 'Secret', secret),
    h('button', { type: 'submit', id: 'login' }, 'Sign in'),
    status);
  mount(form);
  secret.focus();
}
async function showWho() {
  const who = document.getElementById('who');
  if (!credential()) { who.textContent = ''; return; }
  try {
    const me = await api('GET', v1('/tokens/current'));
    who.textContent = (me.userId || me.id || 'signed in') + (me.role ? ' · ' + me.role : '');
  } catch (_) { who.textContent = ''; }
}

// ---- sandbox list ----
function listPage() {
  const body = h('tbody');
  const table = h('table', { class: 'grid', id: 'sandboxes' },
    h('thead', {}, h('tr', {}, ['ID', 'State', 'Image / template', 'Age', 'Expires', ''].map((t) => h('th', {}, t)))), body);
  const stamp = h('span', { class: 'muted', id: 'refreshed' });
  const err = h('div');
  mount(h('section', {},
    h('div', { class: 'bar' }, h('h1', {}, 'Sandboxes'), stamp,
      h('a', { class: 'button', href: '#/sandboxes/new', id: 'new-sandbox' }, 'New sandbox')),
    err, table));
  let stopped = false;
  let timer = null;
  async function load() {
    try {
      const list = await api('GET', v1('/sandboxes?pageSize=100'));
      const items = list.items || [];
      fill(body, ...(items.length ? items.map((sb) => h('tr', { 'data-id': sb.id, 'data-state': sb.status && sb.status.state },
        h('td', {}, h('a', { href: '#/sandbox/' + encodeURIComponent(sb.id) }, h('code', {}, sb.id))),
        h('td', { title: (sb.status && sb.status.message) || '' }, stateBadge(sb.status && sb.status.state)),
        h('td', {}, origin(sb)),
        h('td', { title: sb.createdAt }, age(sb.createdAt)),
        h('td', { title: sb.expiresAt || 'manual cleanup' }, until(sb.expiresAt)),
        h('td', { class: 'actions' }, h('button', { class: 'link danger', type: 'button', onclick: async () => {
          if (!confirm('Delete sandbox ' + sb.id + '?')) return;
          try { await api('DELETE', v1('/sandboxes/' + encodeURIComponent(sb.id))); toast('deleted ' + sb.id); load(); } catch (e) { toast(e.message, true); }
        } }, 'Delete')))) : [h('tr', {}, h('td', { colspan: 6, class: 'muted empty' }, 'No sandboxes yet.'))]));
      table.dataset.count = items.length;
      stamp.textContent = 'refreshed ' + new Date().toLocaleTimeString();
      fill(err);
    } catch (e) { fill(err, errorBox(e)); }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }
  onLeave(() => { stopped = true; clearTimeout(timer); });
  load();
}

// ---- create ----
function createPage() {
  const image = h('input', { id: 'image', name: 'image', required: true, placeholder: 'e.g. python:3.12', value: '' });
  const entry = h('input', { id: 'entrypoint', name: 'entrypoint', value: 'sleep infinity', placeholder: 'the main process (argv, split on spaces)' });
  const timeout = h('input', { id: 'timeout', name: 'timeout', type: 'number', min: 60, value: 3600 });
  const status = h('div');
  const submit = h('button', { type: 'submit', id: 'create' }, 'Create');
  mount(h('form', { class: 'card narrow', id: 'create-form', onsubmit: async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    fill(status, h('p', { class: 'muted' }, 'creating…'));
    try {
      const body = { image: { uri: image.value.trim() }, entrypoint: entry.value.trim().split(/\s+/).filter(Boolean) };
      if (timeout.value) body.timeout = Number(timeout.value);
      const sb = await api('POST', v1('/sandboxes'), body);
      go('#/sandbox/' + encodeURIComponent(sb.id));
    } catch (e) {
      fill(status, errorBox(e));
      submit.disabled = false;
    }
  } },
    h('h1', {}, 'New sandbox'),
    h('label', {}, 'Image', image),
    h('label', {}, 'Entrypoint', entry),
    h('label', {}, 'Timeout (seconds; empty for manual cleanup)', timeout),
    h('div', { class: 'row' }, submit, h('a', { href: '#/sandboxes', class: 'button secondary' }, 'Cancel')),
    status));
  image.focus();
}

// ---- one sandbox ----
const TABS = [['terminal', 'Terminal'], ['files', 'Files'], ['metrics', 'Metrics'], ['logs', 'Logs'], ['events', 'Events']];

function sandboxPage(id, tab) {
  document.body.dataset.page = 'sandbox-' + tab;
  const head = h('div', { class: 'bar' }, h('h1', {}, h('code', {}, id)));
  const info = h('div', { class: 'info', id: 'sandbox-info' });
  const tabs = h('nav', { class: 'tabs' }, TABS.map(([k, label]) =>
    h('a', { href: '#/sandbox/' + encodeURIComponent(id) + '/' + k, class: k === tab ? 'active' : '', 'data-tab': k }, label)));
  const panel = h('section', { class: 'panel', id: 'panel-' + tab });
  mount(head, info, tabs, panel);
  let stopped = false;
  let timer = null;
  async function refresh() {
    try {
      const sb = await api('GET', v1('/sandboxes/' + encodeURIComponent(id)));
      info.dataset.state = sb.status && sb.status.state;
      fill(info,
        h('span', {}, stateBadge(sb.status && sb.status.state)),
        h('span', {}, h('b', {}, 'from '), origin(sb)),
        h('span', {}, h('b', {}, 'age '), age(sb.createdAt)),
        h('span', {}, h('b', {}, 'expires '), until(sb.expiresAt)),
        sb.status && sb.status.message ? h('span', { class: 'muted' }, sb.status.message) : null);
    } catch (e) { fill(info, errorBox(e)); }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  onLeave(() => { stopped = true; clearTimeout(timer); });
  refresh();
  ({ terminal: terminalTab, files: filesTab, metrics: metricsTab, logs: logsTab, events: eventsTab }[tab] || terminalTab)(id, panel);
}

// Waits (by polling the API) until the sandbox runs, so execd can be reached.
async function whenRunning(id, note) {
  for (;;) {
    const sb = await api('GET', v1('/sandboxes/' + encodeURIComponent(id)));
    const state = sb.status && sb.status.state;
    if (state === 'Running') return;
    if (['Failed', 'Terminated', 'Paused'].includes(state)) throw new ApiError(409, 'NOT_RUNNING', 'the sandbox is ' + state);
    note('waiting for the sandbox to run (' + state + ')…');
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// Terminal: POST /pty through the proxy, a ticket, then the WebSocket (binary frames: first
// byte 0 stdin / 1 stdout / 2 stderr / 3 replay with an 8-byte offset; JSON text frames).
function terminalTab(id, panel) {
  const status = h('p', { class: 'muted', id: 'term-status' }, 'connecting…');
  const box = h('div', { class: 'terminal', id: 'terminal' });
  fill(panel, status, box);
  const term = new Terminal({ cols: 100, rows: 28, fontSize: 14, cursorBlink: true,
    theme: { background: '#0f172a', foreground: '#e2e8f0', cursor: '#38bdf8' } });
  term.open(box);
  // For people and for the browser tests: the screen as text.
  window.consoleTerminal = {
    text() { term.selectAll(); const t = term.getSelection(); term.clearSelection(); return t; },
  };
  let ws = null;
  let closed = false;
  onLeave(() => { closed = true; if (ws) ws.close(); term.dispose(); delete window.consoleTerminal; });
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  (async () => {
    try {
      await whenRunning(id, (t) => { status.textContent = t; });
      const base = execd(id);
      const pty = await api('POST', base + '/pty', { cols: term.cols, rows: term.rows });
      const ticket = await api('POST', v1('/sandboxes/' + encodeURIComponent(id) + '/tickets'));
      if (closed) return;
      const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
      ws = new WebSocket(scheme + location.host + base + '/pty/' + encodeURIComponent(pty.session_id) + '/ws?sandboxd_ticket=' + encodeURIComponent(ticket.ticket));
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => { status.textContent = 'connected'; box.dataset.connected = 'true'; term.focus(); };
      ws.onmessage = (ev) => {
        if (typeof ev.data === 'string') {
          let f = null;
          try { f = JSON.parse(ev.data); } catch (_) { return; }
          if (f.type === 'exit') { status.textContent = 'the shell exited (' + f.exit_code + ')'; box.dataset.exit = f.exit_code; }
          if (f.type === 'error') { term.write('\r\n[' + (f.code || 'error') + '] ' + f.error + '\r\n'); }
          return;
        }
        const b = new Uint8Array(ev.data);
        if (!b.length) return;
        const payload = b[0] === 3 ? b.subarray(9) : b.subarray(1);
        if (b[0] <= 3) term.write(dec.decode(payload, { stream: true }));
      };
      ws.onclose = () => { if (!closed) { status.textContent = 'disconnected'; box.dataset.connected = 'false'; } };
      term.on('data', (data) => {
        if (!ws || ws.readyState !== WebSocket.OPEN) return;
        const d = enc.encode(data);
        const frame = new Uint8Array(d.length + 1);
        frame.set(d, 1);
        ws.send(frame);
      });
      term.on('resize', ({ cols, rows }) => {
        if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', cols, rows }));
      });
    } catch (e) { fill(status, errorBox(e)); }
  })();
}

// Files: list a directory, download, upload with a progress bar (XHR upload progress).
function filesTab(id, panel) {
  const base = execd(id);
  const path = h('input', { id: 'dir', value: '/tmp', 'aria-label': 'directory' });
  const list = h('tbody');
  const table = h('table', { class: 'grid', id: 'files' },
    h('thead', {}, h('tr', {}, ['Name', 'Size', 'Modified', 'Mode', ''].map((t) => h('th', {}, t)))), list);
  const err = h('div');
  const picker = h('input', { type: 'file', id: 'upload-file', multiple: true });
  const progress = h('progress', { id: 'upload-progress', max: 100, value: 0, hidden: true });
  const pct = h('span', { class: 'muted', id: 'upload-pct' });
  fill(panel,
    h('form', { class: 'bar', onsubmit: (ev) => { ev.preventDefault(); load(); } },
      h('label', { class: 'inline' }, 'Directory ', path), h('button', { type: 'submit', id: 'list' }, 'List'),
      h('span', { class: 'spacer' }),
      h('label', { class: 'inline' }, 'Upload ', picker), progress, pct),
    err, table);
  async function load() {
    const dir = path.value.replace(/\/+$/, '') || '/';
    try {
      const entries = await api('GET', base + '/directories/list?path=' + encodeURIComponent(dir) + '&depth=1');
      entries.sort((a, b) => (a.type === 'directory') === (b.type === 'directory') ? a.path.localeCompare(b.path) : a.type === 'directory' ? -1 : 1);
      const up = dir === '/' ? null : h('tr', {}, h('td', { colspan: 5 }, h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); path.value = dir.replace(/\/[^/]*$/, '') || '/'; load(); } }, '..')));
      fill(list, ...[up, ...entries.map((f) => {
        const name = f.path.split('/').pop();
        const isDir = f.type === 'directory';
        return h('tr', { 'data-name': name },
          h('td', {}, isDir ? h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); path.value = f.path; load(); } }, name + '/') : name),
          h('td', {}, isDir ? '' : bytes(f.size)),
          h('td', { title: f.modified_at }, f.modified_at ? new Date(f.modified_at).toLocaleString() : ''),
          h('td', {}, h('code', {}, String(f.mode))),
          h('td', { class: 'actions' }, f.type === 'file' ? h('button', { class: 'link', type: 'button', onclick: () => download(f.path, name) }, 'Download') : ''));
      })].filter(Boolean));
      table.dataset.dir = dir;
      fill(err);
    } catch (e) { fill(err, errorBox(e)); }
  }
  async function download(p, name) {
    try {
      const resp = await fetch(base + '/files/download?path=' + encodeURIComponent(p), { headers: authHeaders() });
      if (!resp.ok) await answer(resp);
      const url = URL.createObjectURL(await resp.blob());
      const a = h('a', { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) { toast(e.message, true); }
  }
  picker.addEventListener('change', () => {
    if (!picker.files.length) return;
    const dir = path.value.replace(/\/+$/, '');
    const form = new FormData();
    for (const f of picker.files) {
      form.append('metadata', new Blob([JSON.stringify({ path: dir + '/' + f.name })], { type: 'application/json' }), 'metadata');
      form.append('file', f, f.name);
    }
    const xhr = new XMLHttpRequest();
    xhr.open('POST', base + '/files/upload');
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    progress.hidden = false;
    progress.value = 0;
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) { progress.value = Math.round((ev.loaded / ev.total) * 100); pct.textContent = progress.value + '%'; }
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        progress.value = 100; pct.textContent = 'uploaded'; panel.dataset.uploaded = String(Number(panel.dataset.uploaded || 0) + picker.files.length);
        load();
      } else {
        let m = xhr.responseText;
        try { const j = JSON.parse(m); m = (j.code ? j.code + ': ' : '') + j.message; } catch (_) { /* plain text */ }
        pct.textContent = 'failed'; toast('upload failed: ' + m, true);
      }
      picker.value = '';
    };
    xhr.onerror = () => { pct.textContent = 'failed'; toast('upload failed: network error', true); };
    xhr.send(form);
  });
  whenRunning(id, (t) => fill(err, h('p', { class: 'muted' }, t))).then(load, (e) => fill(err, errorBox(e)));
}

// Reads a server-sent-event stream with fetch() (so it carries the credential headers,
// which EventSource cannot) and calls onEvent with each event's parsed data.
async function readSse(url, signal, onEvent) {
  const resp = await fetch(url, { headers: { ...authHeaders(), Accept: 'text/event-stream' }, signal, cache: 'no-store' });
  if (!resp.ok) await answer(resp);
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true }).replace(/\r\n/g, '\n');
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
      if (data) { try { onEvent(JSON.parse(data)); } catch (_) { /* not JSON: skipped */ } }
    }
  }
}

// Metrics: execd's /metrics/watch (SSE through the proxy), drawn on a canvas.
function metricsTab(id, panel) {
  const canvas = h('canvas', { id: 'chart', width: 900, height: 300, 'data-points': 0 });
  const legend = h('div', { class: 'legend' },
    h('span', { class: 'key cpu' }, 'CPU %'), h('span', { class: 'key mem' }, 'Memory %'),
    h('span', { class: 'muted', id: 'metrics-now' }, 'waiting for samples…'));
  fill(panel, legend, canvas);
  const points = [];
  const MAX = 120;
  const ctrl = new AbortController();
  onLeave(() => ctrl.abort());
  function draw() {
    const ctx = canvas.getContext('2d');
    const W = canvas.width, H = canvas.height, L = 44, R = 12, T = 12, B = 26;
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = '#ffffff'; ctx.fillRect(0, 0, W, H);
    ctx.font = '12px system-ui, sans-serif'; ctx.fillStyle = '#64748b'; ctx.strokeStyle = '#e2e8f0'; ctx.lineWidth = 1;
    for (let p = 0; p <= 100; p += 25) {
      const y = T + (H - T - B) * (1 - p / 100);
      ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(W - R, y); ctx.stroke();
      ctx.fillText(p + '%', 6, y + 4);
    }
    ctx.fillText('last ' + MAX + ' s', W - R - 70, H - 8);
    const line = (key, color) => {
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
      points.forEach((pt, i) => {
        const x = L + (W - L - R) * (points.length === 1 ? 1 : (MAX - points.length + i) / (MAX - 1));
        const y = T + (H - T - B) * (1 - Math.min(100, Math.max(0, pt[key])) / 100);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
      const last = points[points.length - 1];
      if (last) {
        ctx.fillStyle = color; ctx.beginPath();
        ctx.arc(W - R, T + (H - T - B) * (1 - Math.min(100, Math.max(0, last[key])) / 100), 3.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    };
    line('cpu', '#2563eb');
    line('mem', '#16a34a');
  }
  draw();
  (async () => {
    try {
      await whenRunning(id, (t) => { legend.lastChild.textContent = t; });
      await readSse(execd(id) + '/metrics/watch?interval_ms=1000', ctrl.signal, (m) => {
        const cpu = m.cpu_used_pct; // already 0–100 % of cpu_count
        const mem = m.mem_total_mib ? (100 * m.mem_used_mib) / m.mem_total_mib : 0;
        points.push({ cpu, mem });
        if (points.length > MAX) points.shift();
        canvas.dataset.points = points.length;
        legend.lastChild.textContent = 'CPU ' + m.cpu_used_pct.toFixed(1) + '% of ' + m.cpu_count + ' CPUs · memory ' +
          Math.round(m.mem_used_mib) + ' / ' + Math.round(m.mem_total_mib) + ' MiB · ' + m.process_count + ' processes';
        draw();
      });
    } catch (e) { if (e.name !== 'AbortError') panel.append(errorBox(e)); }
  })();
}

// Logs: the scoped diagnostics descriptor.
function logsTab(id, panel) {
  const scope = h('select', { id: 'log-scope' }, ['all', 'container', 'lifecycle', 'process'].map((s) => h('option', { value: s }, s)));
  const pre = h('pre', { class: 'log', id: 'logs' });
  const note = h('div');
  fill(panel, h('div', { class: 'bar' }, h('label', { class: 'inline' }, 'Scope ', scope),
    h('button', { type: 'button', id: 'reload-logs', onclick: () => load() }, 'Reload')), note, pre);
  async function load() {
    try {
      const d = await api('GET', v1('/sandboxes/' + encodeURIComponent(id) + '/diagnostics/logs?scope=' + scope.value + '&tail=500'));
      pre.textContent = d.content || '(empty)';
      pre.dataset.loaded = 'true';
      fill(note, ...(d.warnings || []).map((w) => h('p', { class: 'muted' }, typeof w === 'string' ? w : JSON.stringify(w))),
        d.truncated ? h('p', { class: 'muted' }, 'older lines left out') : null);
      pre.scrollTop = pre.scrollHeight;
    } catch (e) { fill(note, errorBox(e)); }
  }
  scope.addEventListener('change', load);
  load();
}

// Events: the sandbox's journal, refreshed.
function eventsTab(id, panel) {
  const body = h('tbody');
  const table = h('table', { class: 'grid', id: 'events' },
    h('thead', {}, h('tr', {}, ['#', 'When', 'Type', 'Source', 'Message'].map((t) => h('th', {}, t)))), body);
  const err = h('div');
  fill(panel, err, table);
  let since = 0;
  let stopped = false;
  let timer = null;
  async function load() {
    try {
      const d = await api('GET', v1('/sandboxes/' + encodeURIComponent(id) + '/events?since=' + since + '&limit=1000'));
      for (const e of d.items || []) {
        body.append(h('tr', { 'data-type': e.type },
          h('td', {}, e.seq), h('td', { title: e.at }, new Date(e.at).toLocaleTimeString()),
          h('td', {}, h('span', { class: 'badge' }, e.type)), h('td', {}, e.source),
          h('td', {}, e.message, e.reason ? h('span', { class: 'muted' }, ' (' + e.reason + ')') : '')));
      }
      since = d.nextSince || since;
      table.dataset.count = body.children.length;
      fill(err);
    } catch (e) { fill(err, errorBox(e)); }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }
  onLeave(() => { stopped = true; clearTimeout(timer); });
  load();
}

// ---- templates and pools ----
function simpleList(title, tableId, path, columns, row) {
  const body = h('tbody');
  const table = h('table', { class: 'grid', id: tableId }, h('thead', {}, h('tr', {}, columns.map((t) => h('th', {}, t)))), body);
  const err = h('div');
  mount(h('section', {}, h('div', { class: 'bar' }, h('h1', {}, title)), err, table));
  let stopped = false;
  let timer = null;
  async function load() {
    try {
      const d = await api('GET', v1(path));
      const items = (d && d.items) || [];
      fill(body, ...(items.length ? items.map((it) => h('tr', {}, row(it).map((c) => h('td', {}, c))))
        : [h('tr', {}, h('td', { colspan: columns.length, class: 'muted empty' }, 'None yet.'))]));
      table.dataset.count = items.length;
      fill(err);
    } catch (e) { fill(err, errorBox(e)); }
    if (!stopped) timer = setTimeout(load, REFRESH_MS * 2);
  }
  onLeave(() => { stopped = true; clearTimeout(timer); });
  load();
}
function templatesPage() {
  simpleList('Templates', 'templates', '/templates?pageSize=100', ['Name', 'Image', 'Version', 'Build', 'Updated'], (t) => [
    h('code', {}, t.name), t.image, String(t.latestVersion), stateBadge(t.status && t.status.phase), age(t.updatedAt) + ' ago']);
}
function poolsPage() {
  simpleList('Pools', 'pools', '/pools', ['Name', 'Image', 'Available', 'Warming', 'Allocated', 'Buffer', 'Max'], (p) => {
    const s = p.status || {};
    const c = p.capacitySpec || {};
    return [h('code', {}, p.name), p.image, String(s.available ?? ''), String(s.warming ?? ''), String(s.allocated ?? ''),
      (c.bufferMin ?? '') + '–' + (c.bufferMax ?? ''), String(c.poolMax ?? '')];
  });
}

// ---- start ----
document.getElementById('logout').addEventListener('click', () => {
  sessionStorage.removeItem(CRED_KEY);
  showWho();
  go('#/login');
});
window.addEventListener('hashchange', route);
showWho();
route();
