// Routing that learns, backed by the store: the MX cache and the circuit
// breaker's host book (TernRouting's protocols, SQLite's tables).

import Logging
import NIOConcurrencyHelpers
import TernProtocol
import TernRouting
import TernStore

/// MX answers in the `mx_cache` table.
public struct StoreMXCache: MXCache {
    let store: Store
    let logger: Logger

    public init(store: Store, logger: Logger = Logger(label: "tern.routing")) {
        self.store = store
        self.logger = logger
    }

    public func lookup(_ domain: String, now: Int64) -> DNSAnswer<[MXRecord]>? {
        guard let hit = try? store.cachedMX(domain, now: now) else { return nil }
        switch hit.status {
        case "nxdomain": return .nxdomain
        case "none": return .noRecords
        default: return .records(hit.records.map { MXRecord(preference: $0.preference, host: $0.host) })
        }
    }

    public func store(_ domain: String, _ answer: DNSAnswer<[MXRecord]>, until: Int64, now: Int64) {
        let entry: CachedMX
        switch answer {
        case .records(let r): entry = CachedMX(status: "ok", records: r.map { ($0.preference, $0.host) }, expiresAt: until)
        case .nxdomain: entry = CachedMX(status: "nxdomain", records: [], expiresAt: until)
        case .noRecords: entry = CachedMX(status: "none", records: [], expiresAt: until)
        case .temporaryFailure: return
        }
        let store = self.store, logger = self.logger
        Task {
            do { try await store.cacheMX(domain, entry, now: now) } catch {
                logger.warning("cannot cache MX answer", metadata: ["domain": "\(domain)", "error": "\(error)"])
            }
        }
    }
}

/// The circuit breaker's book: in memory for the delivery path, written
/// through to `mx_health` (so that `tern stats routes` shows it and a
/// restart remembers it).
public final class HostHealthBook: HostHealth {
    let store: Store
    let policy: BreakerPolicy
    let clock: any TernClock
    let logger: Logger
    private let records: NIOLockedValueBox<[String: HostRecord]>
    /// The MX host name of each endpoint that failed in this run (for metrics by provider).
    private let names = NIOLockedValueBox<[String: String]>([:])

    public init(store: Store, policy: BreakerPolicy = BreakerPolicy(), clock: any TernClock = SystemClock(),
                logger: Logger = Logger(label: "tern.routing")) {
        self.store = store
        self.policy = policy
        self.clock = clock
        self.logger = logger
        let loaded = (try? store.hostHealth()) ?? []
        records = NIOLockedValueBox(Dictionary(uniqueKeysWithValues: loaded.map {
            ($0.host, HostRecord(failures: $0.failures, successes: $0.successes, lastError: $0.lastError, lastFailureAt: $0.lastFailureAt,
                                 lastSuccessAt: $0.lastSuccessAt, cooldownUntil: $0.cooldownUntil))
        }))
    }

    /// The endpoints cooling down now, with their MX host name when this run saw them fail (else nil).
    public func cooling(now: Int64) -> [(endpoint: String, mxHost: String?)] {
        let keys = records.withLockedValue { r in r.filter { $0.value.coolingDown(at: now) }.map(\.key) }
        return names.withLockedValue { n in keys.sorted().map { ($0, n[$0]) } }
    }

    /// The record of an endpoint (`Hop.breakerKey`, "[address]:port", with " from SOURCE" for a source's).
    public func record(for endpoint: String) -> HostRecord? { records.withLockedValue { $0[endpoint] } }

    public func arrange(_ hops: [Hop], source: String?) -> (usable: [Hop], skipped: [(hop: Hop, until: Int64)]) {
        let keys = Set(hops.map { $0.breakerKey(source: source) })
        let now = clock.now()
        var snapshot = records.withLockedValue { r in r.filter { key, _ in keys.contains(key) } }
        for (key, record) in snapshot where record.coolingDown(at: now) && operatorEnded(key) {
            snapshot[key] = records.withLockedValue { r in
                r[key]?.failures = 0
                r[key]?.cooldownUntil = nil
                return r[key] ?? HostRecord()
            }
            logger.notice("MX host's cool-down ended by the operator", metadata: ["mx": "\(key)"])
        }
        return Breaker.arrange(hops, records: snapshot, now: now, source: source)
    }

    /// Whether an operator ended this host's cool-down in the store
    /// (`tern queue flush` from another process). Read each time a cooling
    /// host is asked about (one row by its key; never for a healthy host):
    /// a pass right after a flush must see it, or it defers the whole
    /// flushed backlog again (a five-second read limit did, in the backlog
    /// benchmark).
    private func operatorEnded(_ key: String) -> Bool {
        guard let stored = try? store.storedHostHealth(key) else { return false }
        return stored.cooldownUntil == nil && stored.failures == 0 && stored.lastError?.hasPrefix(Store.breakerResetMarker) == true
    }

    public func succeeded(_ hop: Hop, source: String?) {
        let now = clock.now()
        update(hop.breakerKey(source: source)) { $0.succeeded(at: now) }
    }

    public func failed(_ hop: Hop, source: String?, reply: SMTPReply) {
        let now = clock.now()
        let key = hop.breakerKey(source: source)
        names.withLockedValue { $0[key] = hop.host }
        let record = update(key) { $0.failed(reply.description, at: now, policy: policy) }
        if let until = record.cooldownUntil, record.failures >= policy.threshold {
            logger.warning("MX host cooling down", metadata: [
                "mx": "\(hop)", "source": "\(source ?? "-")", "failures": "\(record.failures)", "until_ms": "\(until)", "reply": "\(reply)",
            ])
        }
    }

    /// Changes one record and writes it through; returns the new record. A
    /// success that changes nothing but the counters is written at most once
    /// a minute per host, so that healthy traffic costs no write per connection.
    @discardableResult
    private func update(_ host: String, _ change: (HostRecord) -> HostRecord) -> HostRecord {
        let (r, worthWriting) = records.withLockedValue { all -> (HostRecord, Bool) in
            let old = all[host] ?? HostRecord()
            let next = change(old)
            all[host] = next
            let routine = old.failures == 0 && next.failures == 0 && old.cooldownUntil == nil && next.cooldownUntil == nil
                && (next.lastSuccessAt ?? 0) - (old.lastSuccessAt ?? Int64.min / 2) < 60_000
            return (next, !routine)
        }
        guard worthWriting else { return r }
        let store = self.store, logger = self.logger, records = self.records
        Task {
            // The record as it is when the write runs: the latest, whatever order the writes start in.
            let current: @Sendable () -> StoredHostHealth = {
                let r = records.withLockedValue { $0[host] } ?? HostRecord()
                return StoredHostHealth(host: host, failures: r.failures, successes: r.successes, lastError: r.lastError,
                                        lastFailureAt: r.lastFailureAt, lastSuccessAt: r.lastSuccessAt, cooldownUntil: r.cooldownUntil)
            }
            do { try await store.saveHostHealth(current) } catch {
                logger.warning("cannot save MX host health", metadata: ["mx": "\(host)", "error": "\(error)"])
            }
        }
        return r
    }
}
