// The HTTP listener (issue 20), on Hummingbird: `/health` for anyone,
// everything else behind a bearer token (`tern api token add`), of which
// only a SHA-256 is stored. `/metrics` serves what TernMetrics counted (the
// swift-prometheus registry) and gauges read from the database at scrape
// time (the queue by state and age, the database's and WAL's size, free
// disk), in Prometheus' text format with a HELP line for every family.

import Crypto
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import Prometheus
import ServiceLifecycle
import Synchronization
import TernIntake
import TernMetrics
import TernStore

/// What a token may do: inject mail only, read only (metrics, the read API,
/// the dashboard), or everything (admin). A monitoring token cannot send
/// mail, and an application's cannot read the queue.
public enum APIScope: String, Sendable, CaseIterable {
    case inject, read, admin

    public func allows(_ needed: APIScope) -> Bool { self == .admin || self == needed }
}

public enum APITokens {
    /// A new token: "tern_" and 256 random bits, base64url.
    public static func generate() -> String {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let b64 = Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
        return "tern_" + b64
    }

    /// What is stored of a token: its SHA-256, hex.
    public static func hash(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}

/// A request's context: Hummingbird's, and the client's address (for `Received:` and the log).
public struct TernRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

/// What the API reaches besides the store: intake for injection, and its limits.
public struct HTTPAPI: Sendable {
    public var intake: Intake?
    public var limits: InjectionLimits
    /// The CLI's operations, for the read and admin API and the dashboard.
    public var operations: (any AdminOperations)?
    /// TLS for the listener (nil: plain HTTP).
    public var tls: TLSConfiguration?
    /// A connection with no request for this long is closed.
    public var idleTimeoutSeconds: Int64 = 60
    /// Request header bounds: one field, all fields, how many fields.
    public var maxHeaderField = 16 * 1024, maxHeaderList = 64 * 1024, maxHeaderCount = 100

    public init(intake: Intake?, limits: InjectionLimits, operations: (any AdminOperations)? = nil, tls: TLSConfiguration? = nil) {
        self.operations = operations
        self.intake = intake
        self.limits = limits
        self.tls = tls
    }
}

public final class HTTPServer: Service {
    let host: String
    let port: Int
    let store: Store
    let api: HTTPAPI
    let registry: PrometheusCollectorRegistry
    let logger: Logger
    /// Told the bound port once listening (port 0: the kernel's choice).
    let onBound: @Sendable (Int) -> Void
    /// More gauges for `/metrics`, in the text format (the shaping gate's state).
    let extraMetrics: @Sendable () -> String
    /// When each token was last noted as used (written at most once a minute).
    private let touched = Mutex<[String: Int64]>([:])

    public init(host: String, port: Int, store: Store, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), logger: Logger,
                api: HTTPAPI = HTTPAPI(intake: nil, limits: InjectionLimits(maxMessageSize: 10 << 20, maxRecipients: 1000)),
                extraMetrics: @escaping @Sendable () -> String = { "" }, onBound: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.api = api
        self.host = host
        self.port = port
        self.store = store
        self.registry = registry
        self.logger = logger
        self.extraMetrics = extraMetrics
        self.onBound = onBound
    }

    public func run() async throws {
        let router = Router(context: TernRequestContext.self)
        router.get("/health") { _, _ in
            HTTPServer.text("ok\n")
        }
        router.get("/metrics") { request, _ in
            if case .refused(let refusal) = self.authorize(request, needs: .read) { return refusal }
            return HTTPServer.text(self.exposition(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        addAPIRoutes(to: router)
        let logger = self.logger
        var http1 = HTTP1Channel.Configuration(idleTimeout: .seconds(api.idleTimeoutSeconds))
        http1.httpDecoder = .init(maxHeaderFieldSize: api.maxHeaderField, maxHeaderListSize: api.maxHeaderList, maxHeaderFieldCount: api.maxHeaderCount)
        let server: HTTPServerBuilder = try api.tls.map { try .tls(.http1(configuration: http1), tlsConfiguration: $0) } ?? .http1(configuration: http1)
        let app = Application(router: router, server: server, configuration: .init(address: .hostname(host, port: port), serverName: "tern"),
                              onServerRunning: { channel in
                                  let bound = channel.localAddress?.port ?? 0
                                  logger.notice("http listening", metadata: ["address": "\(channel.localAddress?.description ?? "?")"])
                                  self.onBound(bound)
                              }, logger: logger)
        // As a service of serve's group (runService would install its own
        // SIGTERM handler and leave the group early).
        try await app.run()
    }

    static func text(_ body: String, status: HTTPResponse.Status = .ok, contentType: String = "text/plain; charset=utf-8",
                     headers extra: HTTPFields = [:]) -> Response {
        var headers = extra
        headers[.contentType] = contentType
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    enum Access {
        /// The token's name.
        case granted(String)
        case refused(Response)
    }

    /// The token a request carries: the `Authorization: Bearer` header, or
    /// the dashboard's cookie.
    static func token(of request: Request) -> String? {
        if let header = request.headers[.authorization], header.lowercased().hasPrefix("bearer ") {
            return String(header.dropFirst("bearer ".count)).trimmingCharacters(in: .whitespaces)
        }
        for cookie in request.headers[values: .cookie].flatMap({ $0.split(separator: ";") }) {
            let pair = cookie.trimmingCharacters(in: .whitespaces)
            if pair.hasPrefix(HTTPServer.cookieName + "=") { return String(pair.dropFirst(HTTPServer.cookieName.count + 1)) }
        }
        return nil
    }

    static let cookieName = "tern_token"

    /// Granted when the request carries a token whose scope allows `needs`;
    /// else the refusal (`json`: a JSON error body, as the API answers).
    func authorize(_ request: Request, needs: APIScope, json: Bool = false) -> Access {
        authorize(token: HTTPServer.token(of: request), needs: needs, json: json)
    }

    /// As `authorize(_:needs:json:)`, for a token given some other way (the dashboard's login form).
    func authorize(token: String?, needs: APIScope, json: Bool = false) -> Access {
        let challenge: HTTPFields = [.wwwAuthenticate: "Bearer realm=\"tern\""]
        func refuse(_ status: HTTPResponse.Status, _ text: String, _ headers: HTTPFields = [:]) -> Access {
            .refused(json ? HTTPServer.error(status, text, headers: headers) : HTTPServer.text(text + "\n", status: status, headers: headers))
        }
        guard let token else {
            return refuse(.unauthorized, "a bearer token is required (tern api token add NAME)", challenge)
        }
        let found: StoredAPIToken?
        do { found = try store.apiToken(hash: APITokens.hash(token)) } catch {
            logger.error("cannot read the API tokens", metadata: ["error": "\(error)"])
            return refuse(.serviceUnavailable, "the token could not be checked", [.retryAfter: "10"])
        }
        guard let found, let scope = APIScope(rawValue: found.scope) else {
            return refuse(.unauthorized, "unknown token", challenge)
        }
        guard scope.allows(needs) else {
            return refuse(.forbidden, "the token's scope \(scope.rawValue) does not allow this (needs \(needs.rawValue))")
        }
        noteUse(found.name)
        return .granted(found.name)
    }

    /// A JSON error: `{"error": {"status": 400, "message": "…", "field": "…"}}`.
    static func error(_ status: HTTPResponse.Status, _ message: String, field: String? = nil, headers: HTTPFields = [:],
                      more: [(String, JSON)] = []) -> Response {
        var e: [(String, JSON)] = [("status", .int(status.code)), ("message", .string(message))]
        if let field { e.append(("field", .string(field))) }
        return json(.object([("error", .object(e))] + more), status: status, headers: headers)
    }

    static func json(_ value: JSON, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        text(value.text + "\n", status: status, contentType: "application/json", headers: headers)
    }

    private func noteUse(_ name: String) {
        let now = nowMillis()
        let due = touched.withLock { t in
            guard now - (t[name] ?? .min / 2) >= 60_000 else { return false }
            t[name] = now
            return true
        }
        guard due else { return }
        let store = self.store
        Task { try? await store.touchAPIToken(name: name, at: now) }
    }

    // MARK: - Exposition

    /// The registry's families with their HELP lines, then the gauges read now.
    public func exposition() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        var out = ""
        for line in String(decoding: buffer, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE ") {
                let name = line.dropFirst("# TYPE ".count).split(separator: " ").first.map(String.init) ?? ""
                out += "# HELP \(name) \(MetricHelp.text[name] ?? name)\n"
            }
            if !line.isEmpty { out += line + "\n" }
        }
        out += gauges()
        out += extraMetrics()
        return out
    }

    /// Gauges from the database and the file system.
    func gauges() -> String {
        var g = GaugeWriter()
        if let live = try? store.liveCounts() {
            g.family("tern_queue_recipients", "recipients in the queue now, by state")
            for state in [RecipientState.queued, .deferred, .inflight, .held] { g.sample("tern_queue_recipients", [("state", state.rawValue)], live[state] ?? 0) }
        }
        if let shape = try? store.queueShape(now: nowMillis(), limit: Int.max / 2) {
            g.family("tern_queue_recipients_by_age", "recipients in the queue now, by time since they were received")
            for (i, name) in QueueShapeRow.bucketNames.enumerated() {
                g.sample("tern_queue_recipients_by_age", [("age", name)], shape.reduce(0) { $0 + $1.buckets[i] })
            }
        }
        let fm = FileManager.default
        func size(_ path: String) -> Int { ((try? fm.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0 }
        g.family("tern_database_bytes", "size of the SQLite database file")
        g.sample("tern_database_bytes", [], size(store.path))
        g.family("tern_database_wal_bytes", "size of the SQLite write-ahead log")
        g.sample("tern_database_wal_bytes", [], size(store.path + "-wal"))
        var st = statvfs()
        if statvfs((store.path as NSString).deletingLastPathComponent, &st) == 0 {
            g.family("tern_disk_free_bytes", "free space on the database's file system, for unprivileged users")
            g.sample("tern_disk_free_bytes", [], Int(st.f_bavail) * Int(st.f_frsize))
        }
        return g.out
    }
}

/// Writes gauge families in the text format.
public struct GaugeWriter {
    public var out = ""
    public init() {}

    public mutating func family(_ name: String, _ help: String) {
        out += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n"
    }

    public mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Int) {
        let l = labels.isEmpty ? "" : "{" + labels.map { "\($0.0)=\"\(GaugeWriter.escape($0.1))\"" }.joined(separator: ",") + "}"
        out += "\(name)\(l) \(value)\n"
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}

/// HELP texts of the families TernMetrics counts.
enum MetricHelp {
    static let text: [String: String] = [
        "tern_smtp_connections_total": "SMTP connections accepted, by listener role",
        "tern_smtp_sessions": "SMTP sessions open now, by listener role",
        "tern_tls_handshakes_total": "TLS handshakes completed by SMTP listeners, by protocol version",
        "tern_messages_received_total": "messages accepted and committed, by origin",
        "tern_messages_rejected_total": "messages refused at the end of their data, by enhanced status code",
        "tern_auth_failures_total": "failed SMTP AUTH logins",
        "tern_recipients_total": "recipients settled, by outcome and provider (other: not a known provider)",
        "tern_delivery_duration_seconds": "time a remote server took for one message's transaction",
        "tern_queue_time_seconds": "time from acceptance to delivery of delivered recipients",
        "tern_store_commit_batch_size": "requests per group commit",
        "tern_store_commit_duration_seconds": "time one group commit took, fsync included",
        "tern_dns_lookups_total": "DNS look-ups, by record type and result",
        "tern_mx_cache_hits_total": "MX answers served from the database's cache",
        "tern_delivery_body_memory_bytes": "message bodies outbound connections hold read back from the database",
        "tern_delivery_body_memory_waits_total": "times an outbound connection waited for room in delivery.body_memory",
    ]
}

#if canImport(Glibc)
import Glibc
#endif
