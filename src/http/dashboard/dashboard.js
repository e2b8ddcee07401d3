/* global document, window, sessionStorage, fetch, uPlot */
// The operators' dashboard: plain DOM, no framework, no build step. Every number comes from the
// admin report routes (/api/usage/admin/top, near-limits, history, limits) with the admin token
// the operator typed in. The token lives in this tab's sessionStorage only: never in a URL,
// never in localStorage, gone when the tab closes. Data is written with textContent, never as HTML.

const TOKEN_KEY = 'quota.adminToken'
const REFRESH_MS = 10_000
const METRICS = ['deployments', 'api_calls', 'compute_hours', 'storage']
const COLUMNS = { deployments: 'deployments_created', api_calls: 'api_calls', compute_hours: 'compute_hours', storage: 'storage_gb' }
const TOTALS = { deployments: 'total_deployments', api_calls: 'total_api_calls', compute_hours: 'total_compute_hours', storage: 'total_storage_gb' }
const HISTORY_DAYS = 7
const DAY_S = 86_400

const $ = (id) => document.getElementById(id)
const state = { userId: null, userName: null, charts: new Map(), timer: undefined }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v
    else node.setAttribute(k, v)
  }
  for (const child of children) node.append(child instanceof window.Node ? child : document.createTextNode(String(child)))
  return node
}

const fmt = (n) => (n === null || n === undefined ? '∞' : Number(n).toLocaleString('en-US', { maximumFractionDigits: 6 }))

class ApiError extends Error {}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY)
  if (!token) throw new ApiError('Type an admin token to see the data.')
  let res
  try {
    res = await fetch(path, { headers: { authorization: `Bearer ${token}` }, cache: 'no-store' })
  } catch {
    throw new ApiError('The quota service is unreachable.')
  }
  let body
  try {
    body = await res.json()
  } catch {
    body = undefined
  }
  if (!res.ok) {
    const detail = body && body.detail
    const message = detail && detail.message ? `${detail.error}: ${detail.message}` : `HTTP ${res.status}`
    throw new ApiError(`${res.status} — ${message}`)
  }
  return body
}

function showError(message) {
  const box = $('error')
  box.textContent = message
  box.hidden = !message
}

function renderTop(reports) {
  const holder = $('top')
  holder.replaceChildren()
  $('top-date').textContent = reports[0] ? `(${reports[0].date}, UTC)` : ''
  for (const report of reports) {
    const column = COLUMNS[report.metric]
    const rows = report.users.filter((u) => u[column] > 0)
    const body = el('tbody')
    for (const u of rows) {
      const tr = el('tr', { class: `pick${u.user_id === state.userId ? ' selected' : ''}`, 'data-user': u.user_id, title: 'Show this user\'s history' },
        el('td', {}, u.username), el('td', {}, u.tier), el('td', { class: 'num' }, fmt(u[column])))
      tr.addEventListener('click', () => pickUser(u.user_id, u.username))
      body.append(tr)
    }
    if (rows.length === 0) body.append(el('tr', {}, el('td', { class: 'empty', colspan: '3' }, 'nobody yet')))
    holder.append(el('div', { class: 'card', 'data-metric': report.metric },
      el('h3', {}, report.metric),
      el('table', { class: 'top' }, el('thead', {}, el('tr', {}, el('th', {}, 'user'), el('th', {}, 'tier'), el('th', {}, 'today'))), body)))
  }
}

function bar(metric) {
  if (!metric) return el('span', { class: 'muted' }, 'unlimited')
  const pct = metric.ratio === null ? 100 : Math.min(100, metric.ratio * 100)
  const fill = el('span')
  fill.style.width = `${pct}%`
  return el('div', { class: `bar${metric.near ? ' near' : ''}`, title: `${fmt(metric.current)} of ${fmt(metric.limit)}` },
    fill, el('em', {}, `${fmt(metric.current)} / ${fmt(metric.limit)}`))
}

function renderNear(report) {
  const body = $('near').tBodies[0]
  body.replaceChildren()
  for (const u of report.users) {
    const tr = el('tr', { class: 'pick', 'data-user': u.user_id }, el('td', {}, u.username), el('td', {}, u.tier),
      ...METRICS.map((m) => el('td', {}, bar(u.metrics[m]))))
    tr.addEventListener('click', () => pickUser(u.user_id, u.username))
    body.append(tr)
  }
  if (report.users.length === 0) body.append(el('tr', {}, el('td', { class: 'empty', colspan: '6' }, 'nobody near a limit')))
}

/** Every day of the window (a day without usage is 0), oldest first, as uPlot's columns. */
function historySeries(report, metric) {
  const byDay = new Map(report.days.map((d) => [d.date, d[TOTALS[metric]]]))
  const start = Date.parse(`${report.from}T00:00:00Z`) / 1000
  const end = Date.parse(`${report.to}T00:00:00Z`) / 1000
  const xs = []
  const ys = []
  for (let t = start; t <= end; t += DAY_S) {
    xs.push(t)
    ys.push(byDay.get(new Date(t * 1000).toISOString().slice(0, 10)) ?? 0)
  }
  return [xs, ys]
}

function renderHistory(report) {
  const holder = $('history')
  $('history-who').textContent = state.userId ? `user ${state.userName}` : 'all users'
  $('history-all').hidden = !state.userId
  for (const metric of METRICS) {
    const data = historySeries(report, metric)
    const chart = state.charts.get(metric)
    if (chart) {
      chart.setData(data)
      continue
    }
    const card = el('div', { class: 'card', 'data-metric': metric }, el('h3', {}, metric))
    holder.append(card)
    const width = Math.max(360, card.clientWidth - 24)
    state.charts.set(metric, new uPlot({
      width,
      height: 180,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      legend: { show: false },
      series: [{}, { label: metric, stroke: '#3b74c4', fill: 'rgba(59,116,196,0.15)', width: 2, points: { size: 6 } }],
      axes: [{ space: 50 }, { size: 60 }],
    }, data, card))
  }
}

function renderLimits(body) {
  const tbody = $('limits').tBodies[0]
  tbody.replaceChildren()
  for (const t of body.tiers) {
    tbody.append(el('tr', {}, el('td', {}, t.tier),
      ...['max_deployments_per_day', 'max_api_calls_per_day', 'max_compute_hours_per_day', 'max_storage_gb']
        .map((c) => el('td', { class: 'num' }, fmt(t[c])))))
  }
}

async function refresh() {
  try {
    const user = state.userId ? `&user_id=${encodeURIComponent(state.userId)}` : ''
    const [top, near, history, limits] = await Promise.all([
      Promise.all(METRICS.map((m) => api(`/api/usage/admin/top?metric=${m}&limit=10`))),
      api('/api/usage/admin/near-limits?threshold=0.8'),
      api(`/api/usage/admin/history?days=${HISTORY_DAYS - 1}${user}`),
      api('/api/usage/admin/limits'),
    ])
    renderTop(top)
    renderNear(near)
    renderHistory(history)
    renderLimits(limits)
    showError('')
    $('updated').textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`
    document.body.dataset.loaded = 'true'
  } catch (err) {
    showError(err instanceof ApiError ? err.message : `Unexpected error: ${err && err.message}`)
    document.body.dataset.loaded = 'error'
  }
}

function pickUser(id, name) {
  state.userId = state.userId === id ? null : id
  state.userName = state.userId ? name : null
  void refresh()
}

function start() {
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault()
    const value = $('token').value.trim().replace(/^Bearer\s+/i, '')
    if (value) sessionStorage.setItem(TOKEN_KEY, value)
    $('token').value = ''
    void refresh()
  })
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY)
    void refresh()
  })
  $('history-all').addEventListener('click', () => pickUser(state.userId, null))
  void refresh()
  // Refreshes in place: no reload, the charts keep their canvas and get new data.
  state.timer = window.setInterval(() => void refresh(), REFRESH_MS)
}

start()
