// The fleet's state, built from MQTT messages. No DOM and no MQTT here, so that node's test
// runner checks it (tests/fleet.test.mjs) and the page only draws it.
//
// Topics and messages: fv-core's `wire` module, whose types generate the schemas this
// reads: PREFIX/SITE/DEVICE/{status,heartbeat,result}.
//   status    core/schemas/status.schema.json, retained; the last will says offline, so a
//             unit that drops off the network turns offline on its own
//   heartbeat core/schemas/heartbeat.schema.json
//   result    core/schemas/result.schema.json, QoS 1: delivered at least once, so the same
//             id can arrive twice and is counted once
//
// Served by fv-fleet, the page first loads the fleet's history from its API (loadHistory);
// live messages then add to it, a result already in the history counted once by its id.

/** Heartbeat interval assumed until a unit's heartbeat states its own. */
export const DEFAULT_INTERVAL_S = 10;
/** A unit is stale after this many missed heartbeat intervals. */
export const STALE_INTERVALS = 3;
/** How many results the recent list keeps. */
export const RECENT = 50;
/** How many result ids are remembered to drop redelivered duplicates. */
const SEEN_IDS = 10000;

export class Fleet {
  constructor(prefix) {
    this.prefix = prefix.replace(/\/+$/, '');
    this.units = new Map(); // "site/device" -> unit
    this.recent = []; // newest first
    this.seen = new Set();
    this.seenOrder = [];
    this.counts = new Map(); // "YYYY-MM-DD" -> site -> {fracture, suspicious, no_fracture, not_applicable, failed}
    this.zones = new Map(); // site -> IANA time zone, from fv-fleet (days are the site's own)
    this.history = false; // true once fv-fleet's history is loaded
  }

  /** YYYY-MM-DD at the site (its zone from fv-fleet; else the browser's). */
  siteDay(site, date) {
    const zone = this.zones.get(site);
    return zone ? zonedDay(date, zone) : localDay(date);
  }

  markSeen(id) {
    if (typeof id !== 'string') return true;
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    this.seenOrder.push(id);
    if (this.seenOrder.length > SEEN_IDS) this.seen.delete(this.seenOrder.shift());
    return true;
  }

  /**
   * Loads fv-fleet's history (its /api/sites, /api/counts, /api/results and /api/units
   * answers). Replaces what the page had counted: the store already holds every live message
   * the page has seen.
   */
  loadHistory({ sites = [], counts = [], results = [], units = [] }) {
    this.history = true;
    for (const s of sites) if (s.zone) this.zones.set(s.site, s.zone);
    this.counts = new Map();
    for (const c of counts) {
      if (!this.counts.has(c.day)) this.counts.set(c.day, new Map());
      this.counts.get(c.day).set(c.site, {
        fracture: c.fracture, suspicious: c.suspicious, no_fracture: c.no_fracture,
        not_applicable: c.not_applicable ?? 0, failed: c.failed,
      });
    }
    this.recent = [];
    for (const r of results.slice(0, RECENT)) {
      this.markSeen(r.id);
      this.recent.push({
        id: r.id, site: r.site, device: r.device, time: r.processed_at,
        finding: r.finding, probability: r.probability, boxes: r.boxes, error: r.error,
      });
    }
    // Ids of the listed results are known; older ones are too old to be redelivered live.
    for (const r of results) this.markSeen(r.id);
    for (const h of units) {
      if (h.state === 'removed') { this.units.delete(`${h.site}/${h.device}`); continue; }
      const u = this.unit(h.site, h.device);
      u.state = h.state === 'offline' ? 'offline' : (h.state === 'gone' ? 'offline' : 'online');
      u.gone = h.state === 'gone';
      u.reason = h.reason ?? null;
      u.version = h.version ?? u.version;
      if (Array.isArray(h.models)) u.models = h.models;
      // The server's receive time, judged against this browser's clock.
      u.heartbeatAt = h.heartbeat_at ? Date.parse(h.heartbeat_at) : null;
      if (Number.isFinite(h.interval_s) && h.interval_s > 0) u.intervalS = h.interval_s;
      u.outboxDepth = h.outbox_depth ?? null;
      u.pacsDepth = Number.isFinite(h.pacs_outbox_depth) ? h.pacs_outbox_depth : null;
      u.processed = h.processed ?? null;
      u.failed = h.failed ?? null;
      u.online24h = Number.isFinite(h.online_24h) ? h.online_24h : null;
      u.lastSeen = h.last_seen ? Date.parse(h.last_seen) : null;
    }
  }

  /** Daily totals per site for the last `days` site-local days, oldest first. */
  series(site, days, now) {
    const out = [];
    for (let i = days - 1; i >= 0; i--) {
      const day = this.siteDay(site, new Date(now - i * 86400000));
      const c = this.counts.get(day)?.get(site);
      out.push({ day, ...(c ?? { fracture: 0, suspicious: 0, no_fracture: 0, not_applicable: 0, failed: 0 }) });
    }
    return out;
  }

  /** Every site with results or units. */
  sites() {
    const s = new Set();
    for (const perSite of this.counts.values()) for (const site of perSite.keys()) s.add(site);
    for (const u of this.units.values()) s.add(u.site);
    return [...s].sort();
  }

  /** The topic filters to subscribe to. */
  filters() {
    return ['status', 'heartbeat', 'result'].map((k) => `${this.prefix}/+/+/${k}`);
  }

  unit(site, device) {
    const key = `${site}/${device}`;
    let u = this.units.get(key);
    if (!u) {
      u = {
        key, site, device,
        state: 'unknown', reason: null, publisher: null, version: null, models: [],
        heartbeatAt: null, intervalS: DEFAULT_INTERVAL_S,
        outboxDepth: null, pacsDepth: null, pacs: null, dropped: null, processed: null, failed: null,
      };
      this.units.set(key, u);
    }
    return u;
  }

  /**
   * Applies one message. `now` is the receive time (ms): heartbeat age is judged by this
   * browser's clock, not the unit's, whose clock may be wrong in the field.
   * Returns what changed ('unit' | 'result' | null), or throws on a payload that is not JSON.
   */
  apply(topic, payloadText, now) {
    if (!topic.startsWith(this.prefix + '/')) return null;
    const parts = topic.slice(this.prefix.length + 1).split('/');
    if (parts.length !== 3) return null;
    const [site, device, kind] = parts;
    if (kind === 'status' && payloadText === '') {
      // An empty retained message clears a decommissioned unit.
      this.units.delete(`${site}/${device}`);
      return 'unit';
    }
    const msg = JSON.parse(payloadText);
    if (kind === 'status') {
      const u = this.unit(site, device);
      u.state = msg.state === 'online' ? 'online' : 'offline';
      u.gone = false;
      u.reason = msg.reason ?? null;
      u.version = msg.version ?? u.version;
      if (Array.isArray(msg.models)) u.models = msg.models;
      return 'unit';
    }
    if (kind === 'heartbeat') {
      const u = this.unit(site, device);
      u.gone = false;
      u.heartbeatAt = now;
      if (Number.isFinite(msg.interval_s) && msg.interval_s > 0) u.intervalS = msg.interval_s;
      u.outboxDepth = msg.outbox_depth ?? null;
      // Structured Reports waiting for the PACS (null: the unit has no PACS configured).
      u.pacsDepth = Number.isFinite(msg.pacs_outbox_depth) ? msg.pacs_outbox_depth : null;
      u.pacs = typeof msg.pacs === 'string' ? msg.pacs : null;
      u.dropped = msg.dropped ?? null;
      u.processed = msg.processed ?? null;
      u.failed = msg.failed ?? null;
      // Set while the unit's publisher cannot do its work (e.g. a read-only outbox).
      u.publisher = typeof msg.publisher === 'string' ? msg.publisher : null;
      if (Array.isArray(msg.models)) u.models = msg.models;
      // A heartbeat means it is connected, even if its retained status was lost.
      if (u.state !== 'online') { u.state = 'online'; u.reason = null; }
      return 'unit';
    }
    if (kind === 'result') {
      this.unit(site, device).gone = false;
      if (!this.markSeen(msg.id)) return null;
      // Only what the page shows is kept: never source names, study hashes or boxes' pixels.
      const r = {
        id: msg.id,
        site, device,
        time: msg.processed_at ?? msg.captured_at ?? null,
        finding: msg.error ? 'failed' : (msg.finding ?? 'failed'),
        probability: typeof msg.fracture_probability === 'number' ? msg.fracture_probability : null,
        boxes: Array.isArray(msg.boxes) ? msg.boxes.length : 0,
        error: msg.error ? msg.error.code ?? 'error' : null,
      };
      this.recent.unshift(r);
      if (this.recent.length > RECENT) this.recent.length = RECENT;
      const day = this.siteDay(site, r.time ? new Date(r.time) : new Date(now));
      if (!this.counts.has(day)) this.counts.set(day, new Map());
      const perSite = this.counts.get(day);
      if (!perSite.has(site)) perSite.set(site, { fracture: 0, suspicious: 0, no_fracture: 0, not_applicable: 0, failed: 0 });
      const c = perSite.get(site);
      c[r.finding in c ? r.finding : 'failed'] += 1;
      return 'result';
    }
    return null;
  }

  /** online | stale | offline | gone | unknown, as of `now` (ms). */
  health(u, now) {
    if (u.gone) return 'gone';
    if (u.state !== 'online') return u.state;
    if (u.heartbeatAt === null) return 'online';
    const ageS = (now - u.heartbeatAt) / 1000;
    return ageS > STALE_INTERVALS * u.intervalS ? 'stale' : 'online';
  }

  /** Today's counts per site, each site's today by its own zone. */
  today(now) {
    const out = new Map();
    for (const site of this.sites()) {
      const c = this.counts.get(this.siteDay(site, new Date(now)))?.get(site);
      if (c) out.set(site, c);
    }
    return out;
  }
}

/** YYYY-MM-DD in the browser's time zone: "today" is the operator's day. */
export function localDay(d) {
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

/** YYYY-MM-DD in an IANA time zone. */
export function zonedDay(d, zone) {
  // en-CA formats dates as YYYY-MM-DD.
  return new Intl.DateTimeFormat('en-CA', {
    timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit',
  }).format(d);
}

/** Page settings: URL query over config.json over defaults. */
export function settings(query, fileConfig) {
  const q = (k) => query.get(k) ?? undefined;
  const f = fileConfig ?? {};
  return {
    broker: q('broker') ?? f.broker ?? null,
    username: q('username') ?? f.username ?? undefined,
    password: q('password') ?? f.password ?? undefined,
    prefix: q('prefix') ?? f.prefix ?? 'fractuvision/v1',
    // fv-fleet's API (relative to the page); absent when fv-edge serves the page.
    history: f.history ?? null,
    token: q('token') ?? undefined,
    tokenRequired: Boolean(f.token_required),
  };
}
