// What Tern counts, for Prometheus (issue 20): swift-metrics handles, made
// once per label set and kept, so that counting is one atomic add on the
// hot path. Without a bootstrapped backend (tests, tools) the handles do
// nothing. `tern serve --http` bootstraps swift-prometheus and serves them
// at /metrics with the gauges read from the database at scrape time
// (TernHTTP). Names follow Prometheus' conventions: `_total` counters,
// base units (`_seconds`, `_bytes`), bounded label sets (listener roles,
// origins, outcomes, providers from the providers' table plus `other`,
// enhanced status codes; never a raw domain or address).

import Metrics
import Synchronization

public enum TernMetrics {
    /// Off until `enable()` (serve with an HTTP listener, after bootstrapping
    /// a backend): then each call is a handle look-up and an atomic add;
    /// before, one relaxed load.
    private static let on = Atomic<Bool>(false)

    public static func enable() { on.store(true, ordering: .relaxed) }

    /// Whether counting is on (callers skip work that only feeds metrics).
    @inline(__always) public static var enabled: Bool { on.load(ordering: .relaxed) }

    /// Handles by name and labels.
    private static let counters = Mutex<[String: Counter]>([:])
    private static let timers = Mutex<[String: Metrics.Timer]>([:])
    private static let recorders = Mutex<[String: Recorder]>([:])
    private static let meters = Mutex<[String: Meter]>([:])

    private static func key(_ name: String, _ labels: [(String, String)]) -> String {
        labels.reduce(name) { $0 + "\u{1}" + $1.0 + "=" + $1.1 }
    }

    static func counter(_ name: String, _ labels: [(String, String)] = []) -> Counter {
        let k = key(name, labels)
        return counters.withLock { c in
            if let h = c[k] { return h }
            let h = Counter(label: name, dimensions: labels)
            c[k] = h
            return h
        }
    }

    static func timer(_ name: String, _ labels: [(String, String)] = []) -> Metrics.Timer {
        let k = key(name, labels)
        return timers.withLock { t in
            if let h = t[k] { return h }
            let h = Metrics.Timer(label: name, dimensions: labels, preferredDisplayUnit: .seconds)
            t[k] = h
            return h
        }
    }

    static func recorder(_ name: String) -> Recorder {
        recorders.withLock { r in
            if let h = r[name] { return h }
            let h = Recorder(label: name, aggregate: true)
            r[name] = h
            return h
        }
    }

    static func meter(_ name: String, _ labels: [(String, String)] = []) -> Meter {
        let k = key(name, labels)
        return meters.withLock { m in
            if let h = m[k] { return h }
            let h = Meter(label: name, dimensions: labels)
            m[k] = h
            return h
        }
    }

    // MARK: - SMTP server

    /// A client connected to a listener (`relay`, `submission`, `submissions`).
    public static func connectionOpened(listener: String) {
        guard enabled else { return }
        counter("tern_smtp_connections_total", [("listener", listener)]).increment()
        meter("tern_smtp_sessions", [("listener", listener)]).increment()
    }

    public static func connectionClosed(listener: String) {
        guard enabled else { return }
        meter("tern_smtp_sessions", [("listener", listener)]).decrement()
    }

    /// A TLS handshake completed (`TLSv1.3`, `TLSv1.2`).
    public static func tlsHandshake(version: String) {
        guard enabled else { return }
        counter("tern_tls_handshakes_total", [("version", version)]).increment()
    }

    /// A message was accepted and committed (`smtp`, `submission`, `local`, `dsn`).
    public static func received(origin: String) {
        guard enabled else { return }
        receivedTotal.add(1, ordering: .relaxed)
        counter("tern_messages_received_total", [("origin", origin)]).increment()
    }

    /// A message was refused at the end of its data, with the reply's enhanced code (`5.4.6`, `4.3.1`, …).
    public static func rejected(reason: String) {
        guard enabled else { return }
        counter("tern_messages_rejected_total", [("reason", reason)]).increment()
    }

    /// A failed SMTP AUTH login.
    public static func authFailed() {
        guard enabled else { return }
        counter("tern_auth_failures_total").increment()
    }

    // MARK: - Delivery

    /// Which running total (for the dashboard) an outcome adds to.
    public enum Tally: Sendable { case delivered, deferred, failed, none }

    /// A recipient's outcome (`delivered`, `deferred`, `bounced`, `expired`, `suppressed`) at a provider (or `other`).
    public static func recipient(_ outcome: String, provider: String, tally: Tally) {
        guard enabled else { return }
        switch tally {
        case .delivered: deliveredTotal.add(1, ordering: .relaxed)
        case .deferred: deferredTotal.add(1, ordering: .relaxed)
        case .failed: failedTotal.add(1, ordering: .relaxed)
        case .none: break
        }
        counter("tern_recipients_total", [("outcome", outcome), ("provider", provider)]).increment()
    }

    // Running totals since start, for the dashboard's live rates.
    private static let receivedTotal = Atomic<Int>(0)
    private static let deliveredTotal = Atomic<Int>(0)
    private static let deferredTotal = Atomic<Int>(0)
    private static let failedTotal = Atomic<Int>(0)

    /// Messages received, recipients delivered, deferred, and bounced or expired since start (counted while enabled).
    public static func totals() -> (received: Int, delivered: Int, deferred: Int, failed: Int) {
        (receivedTotal.load(ordering: .relaxed), deliveredTotal.load(ordering: .relaxed), deferredTotal.load(ordering: .relaxed),
         failedTotal.load(ordering: .relaxed))
    }

    /// How long one message's transaction took at the remote server.
    public static func deliveryDuration(milliseconds: Int64) {
        guard enabled else { return }
        timer("tern_delivery_duration_seconds").recordMilliseconds(milliseconds)
    }

    /// How long a delivered recipient waited in the queue, from acceptance.
    public static func queueTime(milliseconds: Int64) {
        guard enabled else { return }
        timer("tern_queue_time_seconds").recordMilliseconds(milliseconds)
    }

    // MARK: - Delivery's body memory

    /// Bytes of message bodies delivery holds read back from the store now.
    public static func deliveryBodyMemory(bytes: Int) {
        guard enabled else { return }
        meter("tern_delivery_body_memory_bytes").set(bytes)
    }

    /// Both families at zero, shown before delivery first reads a body.
    public static func deliveryBodyMemoryStarted() {
        guard enabled else { return }
        deliveryBodyMemory(bytes: 0)
        counter("tern_delivery_body_memory_waits_total").increment(by: 0)
    }

    /// A connection waited for room in `delivery.body_memory`.
    public static func deliveryBodyMemoryWait() {
        guard enabled else { return }
        counter("tern_delivery_body_memory_waits_total").increment()
    }

    // MARK: - Store

    /// One group commit: how many requests it carried and how long it took.
    public static func commit(batch: Int, nanoseconds: Int64) {
        guard enabled else { return }
        recorder("tern_store_commit_batch_size").record(batch)
        timer("tern_store_commit_duration_seconds").recordNanoseconds(nanoseconds)
    }

    // MARK: - DNS

    /// A DNS look-up (`mx`, `a`, …) and how it ended (`ok`, `nxdomain`, `none`, `error`).
    public static func dnsLookup(type: String, result: String) {
        guard enabled else { return }
        counter("tern_dns_lookups_total", [("type", type), ("result", result)]).increment()
    }

    /// An MX answer served from the database's cache.
    public static func mxCacheHit() {
        guard enabled else { return }
        counter("tern_mx_cache_hits_total").increment()
    }
}
