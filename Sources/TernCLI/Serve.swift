// `tern serve`: the composition root. Resolves the settings (ServeOptions:
// the flags, shared with `tern config show`), opens the store, and runs the
// listener, the scheduler and the retention sweep in the foreground until
// SIGTERM/SIGINT.

import ArgumentParser
import Dispatch
import Foundation
import Logging
import Metrics
import Prometheus
import Synchronization
import CTernSystem
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import TernAuth
import TernDKIM
import TernDelivery
import TernHTTP
import TernIntake
import TernListener
import TernMetrics
import TernMailAuth
import TernProtocol
import TernRouting
import TernScheduler
import TernStore

/// The flags of `tern serve`, shared with `tern config show`. Names and help
/// come from the settings' declarations (SettingsTable.swift).
struct ServeOptions: ParsableArguments {
    @OptionGroup var common: DatabaseOptions

    @Option(name: .long, help: flagHelp("listen", "[ROLE@]HOST:PORT")) var listen: [String] = []
    @Option(name: .long, help: flagHelp("hostname", "NAME")) var hostname: String?
    @Option(name: .customLong("relay-domain"), help: flagHelp("relay_domains", "DOMAIN")) var relayDomains: [String] = []
    @Option(name: .customLong("trusted-network"), help: flagHelp("trusted_networks", "CIDR")) var trustedNetworks: [String] = []
    @Option(name: .customLong("max-message-size"), help: flagHelp("limits.max_message_size", "BYTES")) var maxMessageSize: String?
    @Option(name: .long, help: flagHelp("routes", "DOMAIN=HOST[:PORT]")) var route: [String] = []
    @Option(name: .long, help: flagHelp("resolvers", "HOST:PORT")) var resolver: [String] = []
    @Option(name: .customLong("remote-port"), help: flagHelp("remote_port", "PORT")) var remotePort: String?
    @Option(name: .customLong("tls-policy"), help: flagHelp("delivery.tls_policy", "POLICY")) var tlsPolicy: String?
    @Option(name: .customLong("tls-ca-file"), help: flagHelp("delivery.tls_ca_file", "FILE")) var tlsCAFile: String?
    @Option(name: .customLong("tls-cert"), help: flagHelp("tls_cert", "FILE")) var tlsCert: String?
    @Option(name: .customLong("tls-key"), help: flagHelp("tls_key", "FILE")) var tlsKey: String?
    @Flag(name: .customLong("no-deliver"), help: ArgumentHelp(TernSettings.setting("delivery.enabled")!.help)) var noDeliver = false
    @Option(name: .customLong("log-level"), help: flagHelp("log_level", "LEVEL")) var logLevel: String?
    @Option(name: .long, help: flagHelp("http.listen", "HOST:PORT")) var http: String?

    /// Defaults ← file ← flags, each flag applied through its setting's declaration.
    func resolved() throws -> TernSettings {
        var s = try common.settings()
        let flags: [(String, [String])] = [
            ("listen", listen), ("hostname", hostname.map { [$0] } ?? []), ("relay_domains", relayDomains),
            ("trusted_networks", trustedNetworks), ("limits.max_message_size", maxMessageSize.map { [$0] } ?? []),
            ("routes", route), ("resolvers", resolver), ("remote_port", remotePort.map { [$0] } ?? []),
            ("delivery.tls_policy", tlsPolicy.map { [$0] } ?? []), ("delivery.tls_ca_file", tlsCAFile.map { [$0] } ?? []),
            ("tls_cert", tlsCert.map { [$0] } ?? []), ("tls_key", tlsKey.map { [$0] } ?? []),
            ("delivery.enabled", noDeliver ? ["false"] : []), ("log_level", logLevel.map { [$0] } ?? []),
            ("http.listen", http.map { [$0] } ?? []),
        ]
        for (key, values) in flags { try s.apply(flag: key, values) }
        try s.validateForServe()
        return s
    }
}

/// A flag's help: its setting's line, and the default.
func flagHelp(_ key: String, _ valueName: String) -> ArgumentHelp {
    let setting = TernSettings.setting(key)!
    let value = setting.get(TernSettings())
    let shown = setting.defaultText ?? (value == .strings([]) || value == .string("") ? "none" : value.toml)
    return ArgumentHelp("\(setting.help.prefix(1).uppercased() + setting.help.dropFirst()) (default \(shown)).", valueName: valueName)
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the SMTP server in the foreground (logs to stderr; SIGTERM or SIGINT stops it cleanly).",
        discussion: """
            On start the database is created or migrated. Mail is accepted for --relay-domain \
            domains from anyone, and for any domain from clients in a --trusted-network. \
            A 250 reply to the end of DATA means the message is committed to disk.
            """)

    @OptionGroup var options: ServeOptions

    @Flag(name: .customLong("allow-shared-db"), help: "Start even when the database files are readable by other users (refused otherwise: they hold all mail and password hashes).")
    var allowSharedDB = false

    func resolved() throws -> TernSettings { try options.resolved() }

    func run() async throws {
        let settings: TernSettings
        do { settings = try resolved() } catch { throw fail("\(error)", code: 78) } // EX_CONFIG
        // DKIM keys are read once, now: a bad key stops the start, not a message.
        let signer: DKIMSigner?
        do { signer = try settings.dkimSigner() } catch { throw fail("\(error)", code: 78) }
        bootstrapLogging(level: settings.logLevel)
        let logger = Logger(label: "tern")
        tuneAllocator(logger)
        // Metrics are counted only when they can be read (`[http] listen`):
        // bootstrapped before anything makes a handle.
        let registry = PrometheusCollectorRegistry()
        let http = settings.httpListen.isEmpty ? nil : TernSettings.hostPort(settings.httpListen)
        if http != nil {
            var factory = PrometheusMetricsFactory(registry: registry)
            factory.valueHistogramBuckets["tern_store_commit_batch_size"] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
            // Time in the queue: from seconds (handed over at once) to days (retried).
            factory.durationHistogramBuckets["tern_queue_time_seconds"] = [1, 5, 30, 60, 300, 900, 3_600, 14_400, 86_400, 432_000].map { .seconds($0) }
            MetricsSystem.bootstrap(factory)
            TernMetrics.enable()
        }
        try checkDatabasePrivacy(settings.db, allow: allowSharedDB, logger: logger)
        // One server per database: a second one would take over the first's
        // in-flight recipients at start-up and deliver them twice.
        let lock: ServeLock
        do { lock = try ServeLock(database: settings.db) } catch let e as ServeLock.Held {
            throw fail(e.description, code: 75) // EX_TEMPFAIL
        } catch {
            throw fail("cannot lock \(settings.db).lock: \(error)", code: 74)
        }
        defer { lock.release() }
        let store: Store
        do {
            store = try Store(path: settings.db, logger: logger)
        } catch {
            throw fail("cannot open database \(settings.db): \(error)", code: 74) // EX_IOERR
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: NIOCore.System.coreCount)
        let resolver: CAresResolver
        do {
            resolver = try settings.resolver()
        } catch {
            throw fail("\(error)", code: 78)
        }
        // Routing that learns: MX answers cached in the database for their TTL,
        // and MX hosts that keep failing skipped while they cool down.
        let mxCache = StoreMXCache(store: store, logger: logger)
        let router = Router(routes: settings.routes, resolver: CachingResolver(base: resolver, cache: mxCache, clock: { nowMillis() }),
                            remotePort: settings.remotePort)
        let health = HostHealthBook(store: store, policy: settings.breakerPolicy, logger: logger)
        var client = ClientConfig(heloName: settings.hostname)
        client.connectTimeout = settings.connectTimeout
        client.tlsPolicy = settings.tlsPolicy
        client.tlsCAFile = settings.tlsCAFile
        client.maxHops = settings.maxHops
        let own = OwnEndpoints()
        let agent: SMTPDeliveryAgent
        do {
            agent = try SMTPDeliveryAgent(router: router, config: client, group: group, health: health, own: own, logger: logger)
        } catch {
            throw fail("TLS set-up failed: \(error)", code: 78)
        }
        // Traffic shaping: per-destination limits and throttling rules, asked
        // before each connection and message; its state survives a restart.
        // Source addresses and pools; warm-up caps are part of the same gate
        // (with shaping off, a gate without limits carries them alone).
        var schedulerConfig = settings.schedulerConfig
        schedulerConfig.maxConnections = fitFileLimit(outbound: schedulerConfig.maxConnections, inbound: settings.listenerConfig.maxConnections,
                                                      logger: logger)
        let sourceBook = settings.sourceBook
        schedulerConfig.sources = sourceBook
        var shaping: ShapingGate? = nil
        let warming = Dictionary(uniqueKeysWithValues: settings.sources.compactMap { s in s.warmup.map { (s.name, $0) } })
        if settings.shapingEnabled || !warming.isEmpty {
            let gate = ShapingGate(config: settings.shapingEnabled ? settings.shapingConfig : ShapingConfig(), providers: settings.providerTable,
                                   classifier: settings.classifier, routes: settings.routes, sources: settings.sources.map(\.name),
                                   warmupPlans: settings.warmupPlans, warming: warming, store: store, logger: logger)
            do { try gate.load(now: nowMillis()) } catch { throw fail("cannot read the shaping state: \(error)", code: 74) }
            schedulerConfig.gate = gate
            shaping = gate
        }
        let scheduler = Scheduler(store: store, agent: agent, config: schedulerConfig,
                                  executors: EventLoopExecutor.forEachLoop(of: group), logger: logger)
        // Start-up recovery: SQLite has replayed the WAL on open; check the
        // pages, return leases of the previous run, and say what is queued.
        do {
            let check = try store.quickCheck()
            guard check == ["ok"] else {
                throw fail("database check failed (\(check.prefix(3).joined(separator: "; "))); run `tern doctor`", code: 74)
            }
            let recovered = try await store.recoverLeases(now: nowMillis(), owner: scheduler.owner, everyOtherOwner: true)
            let q = try store.summary()
            logger.notice("queue recovered", metadata: [
                RecipientState.queued.rawValue: "\(q.count(.queued))", RecipientState.deferred.rawValue: "\(q.count(.deferred))",
                RecipientState.held.rawValue: "\(q.count(.held))",
                "inflight_recovered": "\(recovered)", "integrity": "ok",
            ])
        } catch let e as ExitCode {
            throw e
        } catch {
            throw fail("cannot read the queue: \(error)", code: 74)
        }
        // With delivery on, the scheduler takes new mail straight from memory
        // (leased in the intake transaction); beyond its limits, and with
        // --no-deliver, mail is queued and claimed the usual way.
        let intake = Intake(store: store, hostname: settings.hostname, logger: logger,
                            handoff: settings.deliver ? scheduler : nil, maxHops: settings.maxHops, signer: signer,
                            pools: settings.poolChooser, onAccepted: { scheduler.wake() })
        var listenerConfig = settings.listenerConfig
        listenerConfig.onBound = { own.set($0) }
        listenerConfig.recipients = RecipientTable()
        if let cert = settings.tlsCert, let key = settings.tlsKey {
            do {
                listenerConfig.tls = try ServerTLS(certificate: cert, key: key, profile: settings.tlsProfile)
            } catch {
                throw fail("cannot load the TLS certificate or key (\(cert), \(key)): \(error)", code: 78)
            }
        }
        let authenticator = AccountAuthenticator(store: store, throttle: AuthThrottle(policy: settings.throttlePolicy), logger: logger)
        listenerConfig.authenticator = authenticator
        // SPF, DKIM and DMARC for mail from other MTAs, through the same resolver as delivery.
        do { listenerConfig.verifier = try settings.mailVerifier(dns: resolver) } catch { throw fail("\(error)", code: 78) }
        let listener = SMTPListener(config: listenerConfig, intake: intake, group: group, logger: logger)
        logger.info("tern starting", metadata: [
            "db": "\(settings.db)", "hostname": "\(settings.hostname)",
            "relay_domains": "\(settings.relayDomains)", "trusted": "\(settings.trustedNetworks.map(\.description))",
            "routes": "\(settings.routes.map { "\($0.domain)=\($0.host)\($0.port.map { ":\($0)" } ?? "")" })",
            "resolvers": "\(settings.resolvers.isEmpty ? ["system"] : settings.resolvers)",
        ])
        // Shut down in reverse order: the listener stops taking mail first,
        // then the scheduler finishes the deliveries in progress.
        if !settings.deliver { logger.notice("delivery is off (--no-deliver): mail is accepted and queued only") }
        let sweeper = RetentionSweeper(store: store, policy: settings.retention, intervalSeconds: settings.retentionSweepSeconds, logger: logger)
        // Blocklist monitoring of the sources, through the same resolver.
        let psl = try? PublicSuffixList(path: settings.publicSuffixList)
        let blocklists = BlocklistMonitor(config: settings.blocklist, sources: sourceBook, dns: resolver, store: store,
                                          domainOf: { psl?.organizationalDomain($0) ?? $0 }, logger: logger)
        do { try blocklists.applyHolds() } catch { throw fail("cannot read the blocklist status: \(error)", code: 74) }
        if !sourceBook.isEmpty {
            logger.info("sources", metadata: [
                "sources": "\(settings.sources.map { "\($0.name)=\($0.address)" })", "pools": "\(settings.pools.map(\.name))",
                "warming": "\(warming.keys.sorted())",
            ])
        }
        let gate = shaping, providers = settings.providerTable
        var httpTLS: TLSConfiguration? = nil
        if settings.httpTLS, let cert = settings.httpTLSCert ?? settings.tlsCert, let key = settings.httpTLSKey ?? settings.tlsKey {
            do { httpTLS = try ServerTLS.configuration(certificate: cert, key: key, profile: settings.tlsProfile) } catch {
                throw fail("cannot load the HTTP listener's TLS certificate or key (\(cert), \(key)): \(error)", code: 78)
            }
        }
        let operations = CLIOperations(store: store, settings: settings, onQueueChange: { scheduler.wake() })
        let api = HTTPAPI(intake: intake, limits: InjectionLimits(maxMessageSize: settings.maxMessageSize, maxRecipients: settings.maxRecipients),
                          operations: operations, tls: httpTLS)
        let httpServer = http.map { h in
            HTTPServer(host: h.host, port: h.port, store: store, registry: registry, logger: logger, api: api,
                       extraMetrics: { Serve.shapingMetrics(gate, health: health, providers: providers) })
        }
        // Webhooks: the subscriptions are written before any mail moves, so
        // the outbox trigger sees every event from the first.
        let webhooks = WebhookSender(endpoints: settings.webhooks, store: store, logger: logger)
        do { try await webhooks.prepare() } catch { throw fail("cannot write the webhook subscriptions: \(error)", code: 74) }
        let serviceList: [ServiceGroupConfiguration.ServiceConfiguration] =
            [.init(service: sweeper), .init(service: blocklists), .init(service: webhooks)] + (shaping.map { [.init(service: $0)] } ?? [])
            + (httpServer.map { [.init(service: $0)] } ?? [])
            + (settings.deliver ? [.init(service: scheduler)] : []) + [.init(service: listener)]
        var groupConfig = ServiceGroupConfiguration(services: serviceList, logger: logger)
        groupConfig.maximumGracefulShutdownDuration = .seconds(settings.shutdownGrace + 5)
        let services = ServiceGroup(configuration: groupConfig)
        // SIGTERM/SIGINT: the first starts a graceful shutdown, a second ends
        // the grace period at once. One handler owns these signals (two
        // dispatch sources for one signal do not both see it on Linux).
        // Nothing is lost by stopping early: open SMTP transactions were never
        // acknowledged, and claimed recipients keep their lease until the next
        // start returns them.
        let running = Task { try await services.run() }
        let signals = SignalCounter(signals: [SIGTERM, SIGINT]) { count in
            if count == 1 {
                logger.notice("signal received: shutting down gracefully (a second signal stops at once)")
                Task { await services.triggerGracefulShutdown() }
            } else if count == 2 {
                logger.warning("second signal: stopping now")
                running.cancel()
            }
        }
        defer { signals.cancel() }
        // SIGHUP: read the certificate and key again; open connections keep theirs.
        let tls = listenerConfig.tls
        let reload = SignalCounter(signals: [SIGHUP]) { _ in
            guard let tls else { logger.notice("SIGHUP: no TLS certificate configured, nothing to reload"); return }
            do {
                try tls.reload()
                logger.notice("SIGHUP: TLS certificate reloaded", metadata: ["cert": "\(tls.certificatePath ?? "")"])
            } catch {
                logger.error("SIGHUP: cannot reload the TLS certificate; keeping the current one", metadata: ["error": "\(error)"])
            }
        }
        defer { reload.cancel() }
        do {
            try await running.value
        } catch is CancellationError {
            logger.notice("stopped before the grace period ended")
        } catch {
            logger.error("service failed", metadata: ["error": "\(error)"])
            await authenticator.shutdown()
            resolver.shutdown()
            store.close()
            try? await group.shutdownGracefully()
            throw fail("\(error)", code: 71) // EX_OSERR
        }
        let stats = store.commitStats
        await authenticator.shutdown()
        resolver.shutdown()
        store.close()
        try? await group.shutdownGracefully()
        logger.notice("tern stopped; database closed", metadata: [
            "commits": "\(stats.commits)", "committed_requests": "\(stats.requests)",
        ])
    }
}

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the database or apply pending schema migrations, then print the schema version.")

    @OptionGroup var common: DatabaseOptions

    func run() throws {
        bootstrapLogging(level: "warning")
        let settings = try common.settings()
        do {
            let store = try Store(path: settings.db)
            let version = try store.schemaVersion()
            store.close()
            print("\(settings.db): schema version \(version) (this tern knows up to \(Migrator.knownVersion))")
        } catch {
            throw fail("\(error)", code: 74)
        }
    }
}


/// Counts deliveries of some signals; the process's only handler for them.
final class SignalCounter: @unchecked Sendable { // sources are only created and cancelled
    private let sources: [any DispatchSourceSignal]

    init(signals: [Int32], onSignal: @escaping @Sendable (Int) -> Void) {
        let count = Mutex(0)
        sources = signals.map { sig in
            signal(sig, SIG_IGN) // a dispatch source sees the signal only when its default action is off
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                let n = count.withLock { c -> Int in c += 1; return c }
                onSignal(n)
            }
            source.resume()
            return source
        }
    }

    func cancel() { sources.forEach { $0.cancel() } }
}

/// glibc gives freed memory of its per-thread arenas back to the kernel
/// (madvise) as soon as 128 KiB sit free at an arena's top, and the next
/// message faults the pages in again; with the writer, readers and event
/// loops on different threads that cycle ran per batch, with a TLB
/// shoot-down across both cores each time (madvise and page faults were
/// 13 % of the server's CPU in a perf profile of the 20-session bench, 0.3 %
/// after). A fixed 64 MiB trim threshold ends the cycle. Setting it also
/// stops glibc raising its mmap threshold as big chunks are freed; it is
/// pinned at 512 KiB. At glibc's starting 128 KiB, the text buffer of every
/// 100 KiB message (a ByteBuffer rounds it to 128 KiB) was a fresh mapping,
/// mapped, faulted in (20 faults a message) and unmapped each time; from
/// the arena it is reused (7 faults a message; `tools/bench` 100k-10s CPU
/// 0.71 -> 0.61 ms a message, 3 runs each, side by side). Blocks above it
/// still go back to the kernel when freed, and message buffers from
/// 256 KiB on are mappings of their own anyway.
///
/// SQLite's memory statistics are turned off too: with them every
/// sqlite3_malloc and free takes a process-wide mutex (mutex lock and
/// unlock were 9 % of the writer thread; 0.418 -> 0.398 ms CPU per message,
/// medians of 5 alternating runs). Tern reads no sqlite3_status counters.
///
/// And SQLite's blocks of 2 MiB or more (the record of a large row, a
/// large value read) become mappings with transparent huge pages advised,
/// as the message buffers are (tern_system.c): a 10 MiB message went
/// through about 4.6 fresh 10 MiB blocks, each page of them a page fault
/// (11,900 a message). With both, and the client reusing its piece buffer,
/// 1,400 were left and the server's CPU for 200 × 10 MiB over 20 sessions
/// went from 68–70 to 45–47 ms a message (paired runs; docs/benchmarks.md,
/// issue 21's sixth step).
func tuneAllocator(_ logger: Logger) {
    _ = tern_malloc_thresholds(64 << 20, 512 << 10)
    if tern_sqlite_memstatus_off() == 0 { logger.debug("SQLite already initialised; memory statistics stay on") }
    else { logger.debug("SQLite memory statistics off") }
    if tern_sqlite_large_blocks_mapped() == 0 { logger.debug("SQLite already initialised; its large blocks stay malloc's") }
    else { logger.debug("SQLite's blocks of 2 MiB or more are mappings with huge pages advised") }
}

/// Each connection is a file descriptor. Raises the soft limit on open
/// files to the hard one (Debian's shells start at a soft 1024; systemd's
/// hard limit is 524288), as Go's runtime and nginx's
/// `worker_rlimit_nofile` do, and returns the outbound connection limit
/// that fits beside the inbound one and 256 for the database, HTTP and the
/// rest: lowered, with a warning, when the hard limit is too low.
func fitFileLimit(outbound: Int, inbound: Int, logger: Logger) -> Int {
    var limit = rlimit()
    guard getrlimit(RLIMIT_NOFILE_ID, &limit) == 0 else { return outbound }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(RLIMIT_NOFILE_ID, &raised) == 0 { limit = raised }
    }
    let files = limit.rlim_cur == rlim_t.max ? Int.max : Int(clamping: limit.rlim_cur)
    let fitted = fittedOutbound(openFiles: files, inbound: inbound, outbound: outbound)
    if fitted < outbound {
        logger.warning("the open-file limit is too low for the connection limits; outbound connections lowered (raise `ulimit -n` or LimitNOFILE=)",
                       metadata: ["open_files": "\(files)", "limits.max_connections": "\(inbound)",
                                  "delivery.max_connections": "\(outbound)", "outbound_now": "\(fitted)"])
    }
    return fitted
}

/// The outbound connection limit that fits in `openFiles` descriptors
/// beside `inbound` connections and 256 for the rest (at least 16).
public func fittedOutbound(openFiles: Int, inbound: Int, outbound: Int) -> Int {
    let room = openFiles - inbound - 256
    return room < outbound ? max(16, room) : outbound
}

#if canImport(Glibc)
private let RLIMIT_NOFILE_ID = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
#else
private let RLIMIT_NOFILE_ID = RLIMIT_NOFILE
#endif

/// An exclusive `flock` on `<database>.lock`, held for the life of `serve`
/// (the kernel releases it when the process ends, even by SIGKILL). The
/// file holds the holder's pid, for the error the next one prints. CLI
/// commands do not take it: they work beside a running server.
final class ServeLock: Sendable {
    struct Held: Error, CustomStringConvertible {
        let database: String
        let pid: String
        var description: String {
            "another `tern serve` (pid \(pid.isEmpty ? "unknown" : pid)) is running on \(database); stop it first (or give this one another --db)"
        }
    }

    let fd: Int32
    let path: String

    init(database: String) throws {
        path = database + ".lock"
        let folder = URL(fileURLWithPath: database).deletingLastPathComponent().path
        if !FileManager.default.fileExists(atPath: folder) {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            var buf = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buf, buf.count, 0)
            close(fd)
            if e == EWOULDBLOCK {
                let pid = String(decoding: buf.prefix(max(0, n)), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                throw Held(database: database, pid: pid)
            }
            throw POSIXError(POSIXErrorCode(rawValue: e) ?? .EIO)
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pwrite(fd, text, text.count, 0)
        self.fd = fd
    }

    func release() {
        _ = ftruncate(fd, 0)
        close(fd) // closing drops the lock
    }
}

extension Serve {
    /// Throttling and the circuit breaker for /metrics: per provider (bounded
    /// labels; destinations that are single domains are summed as `other`).
    static func shapingMetrics(_ gate: ShapingGate?, health: HostHealthBook, providers: ProviderTable) -> String {
        var g = GaugeWriter()
        if let gate {
            let known = Set(providers.rules.map(\.name))
            var factor: [String: Double] = [:]
            var paced: [String: Int] = [:]
            for s in gate.snapshot(now: nowMillis()) {
                let p = known.contains(s.key.destination) ? s.key.destination : "other"
                factor[p] = min(factor[p] ?? 1, s.state.factor)
                if s.state.mode(at: nowMillis()) != .normal { paced[p, default: 0] += 1 }
            }
            g.family("tern_shaping_paced_destinations", "destinations (by provider, per source) throttled, suspended or paused now")
            for p in factor.keys.sorted() { g.sample("tern_shaping_paced_destinations", [("provider", p)], paced[p] ?? 0) }
            g.family("tern_shaping_throttle_percent", "the lowest share of its configured pace a provider's destinations run at now")
            for p in factor.keys.sorted() { g.sample("tern_shaping_throttle_percent", [("provider", p)], Int((factor[p]! * 100).rounded())) }
        }
        // By provider: the MX name the endpoint failed under in this run (an endpoint cooling since before the start: other).
        var cooling: [String: Int] = [:]
        for c in health.cooling(now: nowMillis()) { cooling[c.mxHost.flatMap { providers.provider(forMX: $0) } ?? "other", default: 0] += 1 }
        g.family("tern_breaker_hosts_cooling", "MX endpoints the circuit breaker skips now, by provider (other: not a known provider)")
        g.sample("tern_breaker_hosts_cooling", [("provider", "other")], cooling["other"] ?? 0)
        for p in cooling.keys.sorted() where p != "other" { g.sample("tern_breaker_hosts_cooling", [("provider", p)], cooling[p]!) }
        return g.out
    }
}
