// The veem dashboard: a client of the VMI (/vmi/v1), nothing more. Every call carries the
// token typed at login as `Authorization: Bearer`. Whatever comes from the VMI (a VEE's name,
// a console's text) is put on the page as text (textContent, DOM nodes), never as markup.
'use strict';

const API = '/vmi/v1';
const TOKEN_KEY = 'veem.token';
const ACTIONS = ['ACTIVATE', 'PAUSE', 'SUSPEND', 'SHUTDOWN', 'DESTROY'];
/// How far back the plot looks, and how many live events the log keeps.
const PLOT_WINDOW_MS = 15 * 60 * 1000;
const LOG_KEEP = 300;
const VEE_PAGE = 50;

const $ = (id) => document.getElementById(id);

/// An answer of the VMI that is not a success: its problem+json `code` and `detail`.
class VmiError extends Error {
  constructor(status, code, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

const session = {
  token: sessionStorage.getItem(TOKEN_KEY),
  admin: false,
  stream: null, // the AbortController of the live stream
};

// ---- DOM helpers: elements and text only ----

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'text') node.textContent = String(value);
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function fill(tbody, rows, emptyText, columns) {
  tbody.replaceChildren(...rows);
  if (rows.length === 0) {
    tbody.append(el('tr', { class: 'empty' }, el('td', { colspan: columns, text: emptyText })));
  }
}

const time = (ms) => (ms ? new Date(ms).toLocaleString() : '');
const clock = (ms) => new Date(ms).toLocaleTimeString();
function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function showMessage(text, kind) {
  $('message-text').textContent = text;
  $('message').className = kind || 'error';
  $('message').hidden = false;
}
function showError(e) {
  if (e instanceof VmiError) showMessage(`${e.message}${e.code ? ` (${e.code})` : ''}`);
  else showMessage(String(e && e.message ? e.message : e));
}

// ---- the VMI ----

async function problemOf(response) {
  let code = null;
  let detail = null;
  try {
    const body = await response.json();
    code = body.code || null;
    detail = body.detail || body.title || null;
  } catch (_) {
    // Not problem+json: the status says enough.
  }
  return new VmiError(response.status, code, detail || `${response.status} ${response.statusText}`);
}

async function vmiRaw(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  if (response.status === 401 && session.token) {
    logout('The VEEM no longer accepts this token; log in again.');
  }
  if (!response.ok) throw await problemOf(response);
  return response;
}

async function vmi(method, path, body) {
  const response = await vmiRaw(method, path, body);
  if (response.status === 204) return null;
  return response.json();
}

// ---- login ----

async function login(token) {
  session.token = token;
  // Any call tells whether the token is one of this VEEM's principals.
  const probe = await fetch(`${API}/vees?limit=1`, { headers: { Authorization: `Bearer ${token}` } });
  if (!probe.ok) {
    session.token = null;
    if (probe.status === 401) throw new VmiError(401, 'unauthenticated', 'This token is not accepted by this VEEM.');
    throw await problemOf(probe);
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  await start();
}

function logout(why) {
  session.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (session.stream) session.stream.abort();
  session.stream = null;
  closeVee();
  // The next person starts at the VEE list, not at a VEE of the one who left.
  history.replaceState(null, '', location.pathname);
  for (const view of document.querySelectorAll('.view')) view.hidden = true;
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('whoami').textContent = '';
  $('login-view').hidden = false;
  $('login-error').textContent = why || '';
}

async function start() {
  $('login-view').hidden = true;
  $('login-error').textContent = '';
  $('nav').hidden = false;
  $('logout').hidden = false;
  // Admin-only and federation-only views show where they answer.
  try {
    await vmi('GET', '/hosts?limit=1');
    session.admin = true;
  } catch (e) {
    session.admin = false;
  }
  $('nav-hosts').hidden = !session.admin;
  $('whoami').textContent = session.admin ? 'admin' : 'principal';
  try {
    const sites = await vmi('GET', '/sites');
    $('nav-sites').hidden = sites.sites.length === 0;
  } catch (e) {
    $('nav-sites').hidden = true;
  }
  openStream();
  route();
}

// ---- views, by the page's #fragment ----

const views = {
  vees: () => { showView('vees'); loadImagesInto(); return loadVees(); },
  vee: (id) => { showView('vee'); return openVee(id); },
  hosts: () => { showView('hosts'); return loadHosts(); },
  networks: () => { showView('networks'); return loadNetworks(); },
  images: () => { showView('images'); return loadImages(); },
  sites: () => { showView('sites'); return loadSites(); },
  events: () => { showView('events'); },
};

function showView(name) {
  for (const view of document.querySelectorAll('.view')) view.hidden = view.id !== `${name}-view`;
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('current', link.dataset.view === name || (name === 'vee' && link.dataset.view === 'vees'));
  }
  if (name !== 'vee') closeVee();
}

function route() {
  if (!session.token) return;
  const [name, arg] = decodeURIComponent(location.hash.slice(1)).split('/');
  const view = views[name] || views.vees;
  Promise.resolve(view(arg)).catch(showError);
}

// ---- VEEs ----

const veeList = { pages: [null], index: 0, next: null };

async function loadVees() {
  const query = new URLSearchParams({ limit: String(VEE_PAGE) });
  const state = $('filter-state').value;
  const tag = $('filter-tag').value.trim();
  if (state) query.set('state', state);
  if (tag) query.set('tag', tag);
  const after = veeList.pages[veeList.index];
  if (after) query.set('after', after);
  const page = await vmi('GET', `/vees?${query}`);
  veeList.next = page.next;
  const nameText = $('filter-name').value.trim().toLowerCase();
  const shown = page.vees.filter((v) => !nameText || (v.name || '').toLowerCase().includes(nameText));
  fill($('vee-rows'), shown.map(veeRow), 'No VEEs here.', 7);
  $('vees-next').disabled = !page.next;
  $('vees-first').disabled = veeList.index === 0;
  $('vees-count').textContent = `page ${veeList.index + 1}: ${shown.length} shown`;
}

function veeRow(v) {
  return el('tr', { dataset: { id: v.id, state: v.state }, class: 'vee', onclick: () => { location.hash = `vee/${v.id}`; } },
    el('td', {}, el('a', { href: `#vee/${encodeURIComponent(v.id)}`, text: v.name || '(no name)' })),
    el('td', {}, el('span', { class: `state ${v.state}`, text: v.state })),
    el('td', { text: v.veem_state }),
    el('td', { text: v.host || '' }),
    el('td', { text: v.site || '' }),
    el('td', { text: (v.tags || []).join(', ') }),
    el('td', { class: 'id', text: v.id }));
}

async function loadImagesInto() {
  const select = $('create-image');
  const chosen = select.value;
  try {
    const list = await vmi('GET', '/images');
    select.replaceChildren(el('option', { value: '', text: 'no disk' }),
      ...list.images.map((i) => el('option', { value: i.name, text: `${i.name} (${bytes(i.size_bytes)})` })));
    if (chosen) select.value = chosen;
    else if (list.images.length) select.value = list.images[0].name;
  } catch (e) {
    showError(e);
  }
}

async function createVees(event) {
  event.preventDefault();
  const descriptor = {
    name: $('create-name').value.trim(),
    cpu: Number($('create-cpu').value),
    memory_mb: Number($('create-memory').value),
  };
  const image = $('create-image').value;
  if (image) descriptor.disks = [{ source: `image:${image}`, target: 'vda', clone: true }];
  const request = { model: $('create-model').value, count: Number($('create-count').value), descriptor };
  const result = $('create-result');
  result.textContent = 'Creating…';
  try {
    const created = await vmi('POST', '/vees/initialize', request);
    result.replaceChildren('Created: ', ...created.vees.flatMap((v, i) => [
      i ? ', ' : '', el('a', { href: `#vee/${encodeURIComponent(v.id)}`, class: 'created', text: v.id })]));
    await loadVees();
  } catch (e) {
    result.textContent = '';
    showError(e);
  }
}

// ---- one VEE ----

const detail = {
  id: null,
  timer: null,
  hardware: [], // {t, cpu, mem, live}
  accounting: [], // records
  historyCount: 0,
  liveCount: 0,
};

function closeVee() {
  if (detail.timer) clearInterval(detail.timer);
  detail.timer = null;
  detail.id = null;
}

async function openVee(id) {
  closeVee();
  detail.id = id;
  detail.hardware = [];
  detail.accounting = [];
  detail.historyCount = 0;
  detail.liveCount = 0;
  $('vee-title').textContent = id;
  $('console').textContent = '';
  $('plot').replaceChildren();
  await refreshVee();
  await Promise.all([loadHistory(), refreshConsole(), refreshEvents()]);
  drawPlot();
  detail.timer = setInterval(() => {
    if (detail.id !== id) return;
    refreshConsole();
    loadAccounting().then(drawPlot, () => {});
  }, 3000);
}

async function refreshVee() {
  const id = detail.id;
  const v = await vmi('GET', `/vees/${encodeURIComponent(id)}`);
  if (detail.id !== id) return;
  $('vee-title').textContent = `${v.name || '(no name)'}`;
  const fields = [
    ['Id', v.id], ['State', v.state], ['VEEM state', v.veem_state], ['Phase', v.phase],
    ['Host', v.host], ['Site', v.site], ['Waiting because', v.pending_reason],
    ['Tags', (v.tags || []).join(', ')], ['Created', time(v.created_ms)], ['Updated', time(v.updated_ms)],
  ];
  $('vee-fields').replaceChildren(...fields.filter(([, value]) => value !== undefined && value !== null && value !== '')
    .flatMap(([name, value]) => [el('dt', { text: name }),
      el('dd', { id: `vee-${name.toLowerCase().replace(/ /g, '-')}`, class: name === 'State' ? `state ${value}` : '', text: value })]));
  $('vee-view').dataset.state = v.state;
  $('vee-descriptor').textContent = JSON.stringify(v.descriptor, null, 2);
  $('vee-generated').textContent = JSON.stringify(v.generated || {}, null, 2);
}

async function refreshEvents() {
  const id = detail.id;
  try {
    const list = await vmi('GET', `/vees/${encodeURIComponent(id)}/events`);
    if (detail.id !== id) return;
    fill($('vee-events'), list.events.slice().reverse().map((e) => el('tr', {},
      el('td', { text: time(e.t_ms) }), el('td', { text: e.from || '' }), el('td', { text: e.to }),
      el('td', { text: e.veem_state }), el('td', { text: e.host || '' }), el('td', { text: e.detail || '' }))),
    'No events yet.', 6);
  } catch (e) {
    showError(e);
  }
}

async function refreshConsole() {
  const id = detail.id;
  const state = $('console-state');
  try {
    const response = await vmiRaw('GET', `/vees/${encodeURIComponent(id)}/console`);
    const text = await response.text();
    if (detail.id !== id) return;
    const pre = $('console');
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = text;
    if (atEnd) pre.scrollTop = pre.scrollHeight;
    state.textContent = `(last ${bytes(text.length)}, ${clock(Date.now())})`;
  } catch (e) {
    if (detail.id !== id) return;
    // 409: the VEE holds no host, so it has no console now; not an error to shout about.
    state.textContent = e instanceof VmiError && e.status === 409 ? '(none: the VEE runs on no host now)' : `(${e.message})`;
  }
}

async function act(action) {
  const id = detail.id;
  const state = $('vee-action-state');
  const buttons = document.querySelectorAll('#vee-actions button');
  for (const b of buttons) b.disabled = true;
  state.textContent = `${action}…`;
  try {
    const result = await vmi('POST', '/vees/update-state', { order: 'list', ids: [id], action, timeout_ms: 120000 });
    const failed = result.failed.find((f) => f.id === id);
    if (failed) {
      state.textContent = '';
      showMessage(`${action} failed: ${failed.detail} (${failed.error})`);
    } else {
      state.textContent = `${action} done`;
    }
  } catch (e) {
    state.textContent = '';
    showError(e);
  } finally {
    for (const b of buttons) b.disabled = false;
    if (detail.id === id) await Promise.all([refreshVee(), refreshEvents(), refreshConsole()]).catch(showError);
  }
}

async function purge() {
  const button = $('vee-purge');
  if (button.dataset.armed !== 'yes') {
    // Two clicks: a purge removes every byte of the VEE for good.
    button.dataset.armed = 'yes';
    button.textContent = 'Purge for good?';
    setTimeout(() => { button.dataset.armed = ''; button.textContent = 'Purge'; }, 4000);
    return;
  }
  button.dataset.armed = '';
  button.textContent = 'Purge';
  try {
    await vmi('DELETE', `/vees/${encodeURIComponent(detail.id)}`);
    showMessage(`${detail.id} purged.`, 'info');
    location.hash = 'vees';
  } catch (e) {
    showError(e);
  }
}

// ---- the plot: HARDWARE events and accounting records over time ----

function hardwarePoint(event, live) {
  let cpu = null;
  let mem = null;
  for (const m of event.measurements || []) {
    if (typeof m.value !== 'number') continue;
    if (m.fqn.endsWith('.cpu.usage')) cpu = m.value * 100;
    else if (m.fqn.endsWith('.mem.allotted_mb')) mem = m.value;
  }
  return { t: event.t0 + event.dt, cpu, mem, live };
}

async function loadHistory() {
  const id = detail.id;
  const from = Date.now() - PLOT_WINDOW_MS;
  try {
    const hw = await vmi('GET', `/vees/${encodeURIComponent(id)}/monitoring?type=HARDWARE&from=${from}`);
    if (detail.id !== id) return;
    const history = hw.events.filter((e) => e.type === 'HARDWARE').map((e) => hardwarePoint(e, false));
    detail.historyCount = history.length;
    // Live points already seen stay; history comes first in time.
    const seen = new Set(history.map((p) => p.t));
    detail.hardware = history.concat(detail.hardware.filter((p) => p.live && !seen.has(p.t))).sort((a, b) => a.t - b.t);
  } catch (e) {
    showError(e);
  }
  await loadAccounting();
}

async function loadAccounting() {
  const id = detail.id;
  const to = Date.now();
  try {
    const list = await vmi('GET', `/vees/${encodeURIComponent(id)}/accounting?from=${to - PLOT_WINDOW_MS}&to=${to}`);
    if (detail.id === id) detail.accounting = list.records;
  } catch (e) {
    if (detail.id === id) showError(e);
  }
}

function addLivePoint(event) {
  const point = hardwarePoint(event, true);
  // An event the history already brought is not drawn twice.
  if (detail.hardware.some((p) => p.t === point.t)) return;
  detail.hardware.push(point);
  detail.liveCount += 1;
  const oldest = Date.now() - PLOT_WINDOW_MS;
  detail.hardware = detail.hardware.filter((p) => p.t >= oldest);
  drawPlot();
}

function drawPlot() {
  const plot = $('plot');
  const W = 720;
  const H = 260;
  const left = 52;
  const right = 60;
  const top = 12;
  const bottom = 28;
  const now = Date.now();
  const hw = detail.hardware;
  const acct = detail.accounting.map((r) => ({
    t: r.t0 + r.dt,
    cpu: r.dt > 0 && r.cpu > 0 ? (100 * r.cpu_time_ms) / (r.dt * r.cpu) : 0,
    mem: r.memory_mb,
    active: r.dt > 0 ? (100 * r.active_ms) / r.dt : 0,
  }));
  const times = hw.map((p) => p.t).concat(acct.map((p) => p.t));
  // From the first figure to the last (at least 20 s), so the lines fill the plot.
  const t0 = times.length ? Math.min(...times) : now - 60000;
  const t1 = Math.max(times.length ? Math.max(...times) : now, t0 + 20000);
  const memMax = Math.max(1, ...hw.map((p) => p.mem || 0), ...acct.map((p) => p.mem || 0)) * 1.1;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
  const yPct = (v) => top + (1 - Math.min(v, 100) / 100) * (H - top - bottom);
  const yMem = (v) => top + (1 - v / memMax) * (H - top - bottom);
  const nodes = [svg('rect', { x: left, y: top, width: W - left - right, height: H - top - bottom, class: 'frame' })];
  for (const pct of [0, 25, 50, 75, 100]) {
    nodes.push(svg('line', { x1: left, x2: W - right, y1: yPct(pct), y2: yPct(pct), class: 'grid' }));
    const label = svg('text', { x: left - 6, y: yPct(pct) + 4, class: 'axis', 'text-anchor': 'end' });
    label.textContent = `${pct}%`;
    nodes.push(label);
    const mem = svg('text', { x: W - right + 6, y: yPct(pct) + 4, class: 'axis' });
    mem.textContent = `${Math.round((memMax * pct) / 100)} MB`;
    nodes.push(mem);
  }
  for (const t of [t0, (t0 + t1) / 2, t1]) {
    const label = svg('text', { x: x(t), y: H - 8, class: 'axis', 'text-anchor': 'middle' });
    label.textContent = clock(t);
    nodes.push(label);
  }
  const series = (name, points, y) => {
    const kept = points.filter((p) => p.v !== null && p.v !== undefined);
    if (kept.length === 0) return;
    const line = svg('polyline', { class: `series ${name}`, points: kept.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ') });
    line.dataset.points = String(kept.length);
    nodes.push(line);
    for (const p of kept) nodes.push(svg('circle', { class: `dot ${name}`, cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2.5 }));
  };
  series('cpu-hw', hw.map((p) => ({ t: p.t, v: p.cpu })), yPct);
  series('mem-hw', hw.map((p) => ({ t: p.t, v: p.mem })), yMem);
  series('cpu-acct', acct.map((p) => ({ t: p.t, v: p.cpu })), yPct);
  series('mem-acct', acct.map((p) => ({ t: p.t, v: p.mem })), yMem);
  series('active', acct.map((p) => ({ t: p.t, v: p.active })), yPct);
  if (hw.length === 0 && acct.length === 0) {
    const empty = svg('text', { x: W / 2, y: H / 2, class: 'axis', 'text-anchor': 'middle' });
    empty.textContent = 'No figures yet: they come while the VEE is ACTIVE.';
    nodes.push(empty);
  }
  plot.replaceChildren(...nodes);
  plot.dataset.hardwareHistory = String(detail.historyCount);
  plot.dataset.hardwareLive = String(detail.liveCount);
  plot.dataset.accounting = String(acct.length);
}

// ---- hosts ----

function usage(used, capacity, unit) {
  return el('span', { class: 'use' },
    el('meter', { min: 0, max: capacity, value: used, high: capacity * 0.85, optimum: 0 }),
    ` ${used} / ${capacity}${unit}`);
}

async function loadHosts() {
  const hosts = [];
  let after = null;
  do {
    const page = await vmi('GET', `/hosts?limit=200${after ? `&after=${encodeURIComponent(after)}` : ''}`);
    hosts.push(...page.hosts);
    after = page.next;
  } while (after);
  fill($('host-rows'), hosts.map((h) => el('tr', { dataset: { id: h.id } },
    el('td', { text: h.id }),
    el('td', { title: h.error || '' }, el('span', { class: `state ${h.state}`, text: h.state })),
    el('td', { text: `${h.driver} (${h.agent})` }),
    el('td', {}, usage(h.used.cpus, h.capacity.cpus, '')),
    el('td', {}, usage(h.used.memory_mb, h.capacity.memory_mb, ' MB')),
    el('td', { title: h.vees.join(', '), text: String(h.vees.length) }),
    el('td', {}, el('button', {
      type: 'button',
      text: h.state === 'DISABLED' ? 'Enable' : 'Disable',
      onclick: () => vmi('PATCH', `/hosts/${encodeURIComponent(h.id)}`, { enabled: h.state === 'DISABLED' })
        .then(loadHosts).catch(showError),
    })))), 'No hosts.', 7);
}

// ---- networks ----

async function loadNetworks() {
  const list = await vmi('GET', '/networks');
  fill($('network-rows'), list.networks.map((n) => el('tr', { dataset: { name: n.name } },
    el('td', { text: n.name }), el('td', { text: n.cidr }), el('td', { text: n.public ? 'yes' : 'no' }),
    el('td', { text: n.owner }), el('td', { text: `${n.addresses_used} / ${n.addresses_free}` }),
    el('td', {}, el('button', {
      type: 'button', class: 'danger', text: 'Delete',
      onclick: () => vmi('DELETE', `/networks/${encodeURIComponent(n.name)}`).then(loadNetworks).catch(showError),
    })))), 'No networks.', 6);
}

async function createNetwork(event) {
  event.preventDefault();
  try {
    await vmi('POST', '/networks', {
      name: $('network-name').value.trim(), cidr: $('network-cidr').value.trim(), public: $('network-public').checked,
    });
    $('network-form').reset();
    await loadNetworks();
  } catch (e) {
    showError(e);
  }
}

// ---- images ----

async function loadImages() {
  const list = await vmi('GET', '/images');
  fill($('image-rows'), list.images.map((i) => el('tr', { dataset: { name: i.name } },
    el('td', { text: i.name }), el('td', { text: i.format }), el('td', { text: bytes(i.size_bytes) }),
    el('td', { text: i.owner }), el('td', { text: time(i.created_ms) }),
    el('td', {}, el('button', {
      type: 'button', class: 'danger', text: 'Delete',
      onclick: () => vmi('DELETE', `/images/${encodeURIComponent(i.name)}`).then(loadImages).catch(showError),
    })))), 'No images.', 6);
}

/// An upload with XMLHttpRequest: fetch tells nothing of a request body's progress.
function uploadImage(event) {
  event.preventDefault();
  const name = $('image-name').value.trim();
  const file = $('image-file').files[0];
  if (!file) return;
  const progress = $('image-progress');
  const text = $('image-progress-text');
  const button = $('image-form').querySelector('button');
  progress.hidden = false;
  progress.value = 0;
  button.disabled = true;
  const xhr = new XMLHttpRequest();
  xhr.open('PUT', `${API}/images/${encodeURIComponent(name)}`);
  xhr.setRequestHeader('Authorization', `Bearer ${session.token}`);
  xhr.setRequestHeader('Content-Type', 'application/octet-stream');
  xhr.upload.addEventListener('progress', (e) => {
    if (!e.lengthComputable) return;
    progress.value = (100 * e.loaded) / e.total;
    text.textContent = `${bytes(e.loaded)} of ${bytes(e.total)}`;
  });
  xhr.addEventListener('load', () => {
    button.disabled = false;
    if (xhr.status >= 200 && xhr.status < 300) {
      progress.value = 100;
      text.textContent = `${name} uploaded (${bytes(file.size)})`;
      $('image-form').reset();
      loadImages().catch(showError);
      return;
    }
    progress.hidden = true;
    text.textContent = '';
    let problem = {};
    try { problem = JSON.parse(xhr.responseText); } catch (_) { /* not problem+json */ }
    showError(new VmiError(xhr.status, problem.code, problem.detail || `upload failed: HTTP ${xhr.status}`));
  });
  xhr.addEventListener('error', () => {
    button.disabled = false;
    progress.hidden = true;
    showMessage('The upload broke off (connection lost).');
  });
  xhr.send(file);
}

// ---- sites ----

async function loadSites() {
  const list = await vmi('GET', '/sites');
  fill($('site-rows'), list.sites.map((s) => el('tr', { dataset: { name: s.name } },
    el('td', { text: s.name }), el('td', { text: s.url || '' }),
    el('td', {}, el('span', { class: `state ${s.state}`, text: s.state })),
    el('td', { text: time(s.since_ms) }), el('td', { text: s.vees === undefined ? '' : String(s.vees) }))),
  'No sites registered.', 5);
}

// ---- the live event stream (server-sent events over fetch: EventSource sends no header) ----

function openStream() {
  if (session.stream) session.stream.abort();
  const controller = new AbortController();
  session.stream = controller;
  readStream(controller, 1000);
}

async function readStream(controller, backoffMs) {
  const status = $('stream-state');
  try {
    const response = await fetch(`${API}/monitoring/stream`, {
      headers: { Authorization: `Bearer ${session.token}`, Accept: 'text/event-stream' },
      signal: controller.signal,
    });
    if (!response.ok) throw await problemOf(response);
    status.textContent = 'stream: live';
    status.className = 'stream live';
    backoffMs = 1000;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        dispatchSse(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
    if (e instanceof VmiError && e.status === 401) return;
  }
  if (controller.signal.aborted || session.stream !== controller) return;
  status.textContent = 'stream: reconnecting';
  status.className = 'stream down';
  setTimeout(() => {
    if (session.stream === controller) readStream(controller, Math.min(backoffMs * 2, 15000));
  }, backoffMs);
}

function dispatchSse(block) {
  let type = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue; // a keep-alive comment
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
  }
  if (data.length === 0) return;
  if (type === 'lagged') {
    logLine(Date.now(), 'lagged', '', `${data.join('')} events missed (the page fell behind)`);
    return;
  }
  let event;
  try {
    event = JSON.parse(data.join('\n'));
  } catch (_) {
    return;
  }
  onEvent(event);
}

let refreshSoon = null;

function onEvent(event) {
  const kind = event.type || 'event';
  const summary = (event.measurements || []).slice(0, 4)
    .map((m) => `${m.fqn.split('.').slice(-2).join('.')}=${typeof m.value === 'number' ? +m.value.toFixed(3) : m.value}`).join('  ');
  logLine(event.t0 + (event.dt || 0), kind, event.vee || '', summary);
  if (kind === 'STATE') {
    // A state changed: the list (and the open VEE) show it soon, once for a burst.
    clearTimeout(refreshSoon);
    refreshSoon = setTimeout(() => {
      if (!$('vees-view').hidden) loadVees().catch(showError);
      if (detail.id && !$('vee-view').hidden) Promise.all([refreshVee(), refreshEvents()]).catch(showError);
    }, 200);
  } else if (kind === 'HARDWARE' && event.vee && event.vee === detail.id) {
    addLivePoint(event);
  }
}

function logLine(ms, kind, vee, text) {
  const log = $('event-log');
  log.prepend(el('li', { class: `ev ${kind}` },
    el('time', { text: clock(ms) }), ' ', el('b', { text: kind }), ' ',
    vee ? el('a', { href: `#vee/${encodeURIComponent(vee)}`, text: vee }) : '', ' ', el('span', { text })));
  while (log.children.length > LOG_KEEP) log.lastElementChild.remove();
}

// ---- wiring ----

function wire() {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('token').value.trim();
    $('login-error').textContent = '';
    login(token).then(() => { $('token').value = ''; }, (err) => { $('login-error').textContent = err.message; });
  });
  $('logout').addEventListener('click', () => {
    logout('');
    // A fresh page: nothing the last principal saw stays in it.
    location.reload();
  });
  $('message-close').addEventListener('click', () => { $('message').hidden = true; });
  $('vee-filter').addEventListener('submit', (e) => {
    e.preventDefault();
    veeList.pages = [null];
    veeList.index = 0;
    loadVees().catch(showError);
  });
  $('vees-next').addEventListener('click', () => {
    if (!veeList.next) return;
    veeList.pages[veeList.index + 1] = veeList.next;
    veeList.index += 1;
    loadVees().catch(showError);
  });
  $('vees-first').addEventListener('click', () => { veeList.index = 0; loadVees().catch(showError); });
  $('create-form').addEventListener('submit', createVees);
  for (const button of document.querySelectorAll('#vee-actions button[data-action]')) {
    if (ACTIONS.includes(button.dataset.action)) button.addEventListener('click', () => act(button.dataset.action));
  }
  $('vee-purge').addEventListener('click', purge);
  $('network-form').addEventListener('submit', createNetwork);
  $('image-form').addEventListener('submit', uploadImage);
  window.addEventListener('hashchange', route);
  if (session.token) start().catch((e) => logout(e.message));
  else logout('');
}

wire();
