// The fleet's state, built from MQTT messages. No DOM and no MQTT here, so that node's test
// runner checks it (tests/fleet.test.mjs) and the page only draws it.
//
// Topics (see fv-edge's edge/src/mqtt.rs): PREFIX/SITE/DEVICE/{status,heartbeat,result}.
//   status    retained, {state: online|offline, reason, version, models, ts}; the last will
//             says offline, so a unit that drops off the network turns offline on its own
//   heartbeat {uptime_s, interval_s, outbox_depth, dropped, oversized, processed, failed,
//              last_error, publisher, models, ts}
//   result    fractuvision.result/1 (core/schemas/result.schema.json), QoS 1: delivered at
//             least once, so the same id can arrive twice and is counted once

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
    this.counts = new Map(); // "YYYY-MM-DD" -> site -> {fracture, suspicious, no_fracture, failed}
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
      u.reason = msg.reason ?? null;
      u.version = msg.version ?? u.version;
      if (Array.isArray(msg.models)) u.models = msg.models;
      return 'unit';
    }
    if (kind === 'heartbeat') {
      const u = this.unit(site, device);
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
      this.unit(site, device);
      if (typeof msg.id === 'string') {
        if (this.seen.has(msg.id)) return null;
        this.seen.add(msg.id);
        this.seenOrder.push(msg.id);
        if (this.seenOrder.length > SEEN_IDS) this.seen.delete(this.seenOrder.shift());
      }
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
      const day = localDay(r.time ? new Date(r.time) : new Date(now));
      if (!this.counts.has(day)) this.counts.set(day, new Map());
      const perSite = this.counts.get(day);
      if (!perSite.has(site)) perSite.set(site, { fracture: 0, suspicious: 0, no_fracture: 0, failed: 0 });
      const c = perSite.get(site);
      c[r.finding in c ? r.finding : 'failed'] += 1;
      return 'result';
    }
    return null;
  }

  /** online | stale | offline | unknown, as of `now` (ms). */
  health(u, now) {
    if (u.state !== 'online') return u.state;
    if (u.heartbeatAt === null) return 'online';
    const ageS = (now - u.heartbeatAt) / 1000;
    return ageS > STALE_INTERVALS * u.intervalS ? 'stale' : 'online';
  }

  /** Today's counts per site (the browser's local day). */
  today(now) {
    return this.counts.get(localDay(new Date(now))) ?? new Map();
  }
}

/** YYYY-MM-DD in the browser's time zone: "today" is the operator's day. */
export function localDay(d) {
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
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
  };
}
