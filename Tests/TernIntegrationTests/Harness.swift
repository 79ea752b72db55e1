// Test harness: a real listener + intake + store on an ephemeral loopback
// port, a blocking raw-socket SMTP client, and a runner for external programs.

import Foundation
import TernDKIM
import GRDB
import Logging
import NIOCore
import NIOPosix
import Testing
import TernDelivery
@testable import TernIntake
@testable import TernListener
import TernProtocol
import TernRouting
import TernScheduler
import TernTestSupport
@testable import TernStore
#if canImport(Glibc)
import Glibc
#endif

/// Delivery for a TestServer: where mail goes and how fast retries come.
struct DeliverySetup {
    var routes: [StaticRoute]
    var resolver: any DNSResolver = StaticResolver()
    var remotePort = 25
    var clientTimeout: Int64 = 10
    var edit: @Sendable (inout SchedulerConfig) -> Void = { _ in }
    /// A send gate made with the server's store (shaping).
    var gate: (@Sendable (Store) -> any SendGate)? = nil
    /// The scheduler's clock (a manual one to simulate days).
    var clock: any TernClock = SystemClock()
}

final class TestServer: Sendable {
    let store: Store
    let listener: SMTPListener
    let group: MultiThreadedEventLoopGroup
    let port: Int
    /// Every bound port, in the order of `config.listen`.
    let ports: [Int]
    let dbPath: String
    let scheduler: Scheduler?
    let schedulerTask: Task<Void, Never>?

    static func start(delivery: DeliverySetup? = nil, logger: Logger? = nil, signer: DKIMSigner? = nil, pools: PoolChooser? = nil,
                      _ edit: (inout ListenerConfig, Store) -> Void = { _, _ in }) async throws -> TestServer {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-it-\(UUID().uuidString)")
        let dbPath = dir.appendingPathComponent("tern.sqlite").path
        let store = try Store(path: dbPath)
        let logger = logger ?? { var l = Logger(label: "test"); l.logLevel = .critical; return l }()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        var scheduler: Scheduler? = nil
        let own = OwnEndpoints()
        if let d = delivery {
            var client = ClientConfig(heloName: "mx.test")
            client.setAllTimeouts(d.clientTimeout)
            let agent = try SMTPDeliveryAgent(router: Router(routes: d.routes, resolver: d.resolver, remotePort: d.remotePort),
                                          config: client, group: group, own: own, logger: logger)
            var sc = SchedulerConfig(hostname: "mx.test")
            d.edit(&sc)
            if let g = d.gate { sc.gate = g(store) }
            // As `serve` runs it: delivery workers on the event loops.
            scheduler = Scheduler(store: store, agent: agent, config: sc, clock: d.clock, executors: EventLoopExecutor.forEachLoop(of: group),
                                  logger: logger)
        }
        let s = scheduler
        // As in `tern serve`: the running scheduler takes new mail from memory.
        let intake = Intake(store: store, hostname: "mx.test", logger: logger, handoff: s, signer: signer, pools: pools,
                            onAccepted: { s?.wake() })
        var session = SessionConfig(hostname: "mx.test")
        session.relay = RelayPolicy(relayDomains: ["local.test"])
        var config = ListenerConfig(session: session)
        config.listen = [ListenAddress("127.0.0.1", 0)]
        config.shutdownGraceSeconds = 5
        config.onBound = { own.set($0) } // as `serve` does: delivery never connects to this server
        edit(&config, store)
        let listener = SMTPListener(config: config, intake: intake, group: group, logger: logger)
        try await listener.start()
        let ports = listener.boundAddresses.map { $0.port! }
        let task = scheduler.map { sch in Task { _ = try? await sch.run() } }
        return TestServer(store: store, listener: listener, group: group, ports: ports, dbPath: dbPath, scheduler: scheduler, schedulerTask: task)
    }

    /// The common case: only the listener configuration changes.
    static func start(delivery: DeliverySetup? = nil, _ edit: (inout ListenerConfig) -> Void) async throws -> TestServer {
        try await start(delivery: delivery) { config, _ in edit(&config) }
    }

    private init(store: Store, listener: SMTPListener, group: MultiThreadedEventLoopGroup, ports: [Int], dbPath: String,
                 scheduler: Scheduler?, schedulerTask: Task<Void, Never>?) {
        self.store = store
        self.listener = listener
        self.group = group
        self.port = ports[0]
        self.ports = ports
        self.dbPath = dbPath
        self.scheduler = scheduler
        self.schedulerTask = schedulerTask
    }

    func stop() async {
        await listener.stop()
        schedulerTask?.cancel()
        await schedulerTask?.value
        store.close()
        try? await group.shutdownGracefully()
    }

    func count(_ sql: String) throws -> Int {
        try store.read { db in try Int.fetchOne(db, sql: sql) ?? -1 }
    }

    /// Waits (bounded) until every connection is gone from the server's books.
    func waitForNoConnections() async {
        for _ in 0..<250 where listener.limiter.open > 0 { try? await Task.sleep(for: .milliseconds(20)) }
    }
}

struct Reply: CustomStringConvertible {
    var code: Int
    var lines: [String]
    var last: String { lines.last ?? "" }
    /// "250 2.0.0" style: the code and the enhanced code of the last line.
    var status: String {
        let parts = last.split(separator: " ", maxSplits: 1)
        if let first = parts.first, EnhancedStatus(parsing: first) != nil { return "\(code) \(first)" }
        return "\(code)"
    }
    var description: String { "\(code) \(lines.joined(separator: " | "))" }
}

enum ClientError: Error { case closed, timeout, malformed(String) }

/// Runs blocking client I/O on a Dispatch thread, so that the waiting test
/// does not hold one of the few cooperative threads the server's own tasks
/// (a shutdown, a commit) need to make progress.
/// Every daily rollup row, tagged with its table: what incremental upkeep
/// wrote, to compare with `rebuildRollups()`.
func rollupSnapshot(_ store: Store) throws -> [String] {
    try store.read { db in
        try ["attempt_daily", "deferral_daily", "recipient_daily", "role_daily"].flatMap { table in
            try Row.fetchAll(db, sql: "SELECT * FROM \(table) ORDER BY 1, 2, 3").map { "\(table) \($0)" }
        }
    }
}

func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { cont in
        DispatchQueue.global().async { cont.resume(with: Result { try body() }) }
    }
}

extension RawClient: @unchecked Sendable {} // used by one test at a time

/// `runProgram` off the cooperative pool, for programs that talk to an in-process server.
func runProgramOffPool(_ program: String, _ args: [String], stdin: String? = nil) async throws -> ProcessResult {
    try await offPool { try runProgram(program, args, stdin: stdin) }
}

/// A blocking SMTP client over a plain socket, for byte-exact dialogs.
final class RawClient {
    let fd: Int32
    private var pending: [UInt8] = []

    init(port: Int, timeoutSeconds: Int = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 { close(fd); throw ClientError.closed }
    }

    deinit { close(fd) }

    func send(_ text: String) throws { try send(bytes: Array(text.utf8)) }

    func send(bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw ClientError.closed }
            offset += n
        }
    }

    private func fill() throws {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = recv(fd, &buf, buf.count, 0)
        if n == 0 { throw ClientError.closed }
        if n < 0 { throw errno == EAGAIN || errno == EWOULDBLOCK ? ClientError.timeout : ClientError.closed }
        pending += buf[0..<n]
    }

    func readLine() throws -> String {
        while true {
            if let i = pending.firstIndex(of: 10) {
                var line = Array(pending[..<i])
                pending.removeFirst(i + 1)
                if line.last == 13 { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            try fill()
        }
    }

    func readReply() throws -> Reply {
        var lines: [String] = []
        while true {
            let line = try readLine()
            guard line.count >= 3, let code = Int(line.prefix(3)) else { throw ClientError.malformed(line) }
            lines.append(String(line.dropFirst(4)))
            if line.count == 3 || line[line.index(line.startIndex, offsetBy: 3)] == " " { return Reply(code: code, lines: lines) }
        }
    }

    func readReplies(_ n: Int) throws -> [Reply] { try (0..<n).map { _ in try readReply() } }

    /// True when the server closed the connection (EOF) before the timeout.
    func isClosedByPeer() -> Bool {
        do {
            while true { try fill() }
        } catch ClientError.closed {
            return true
        } catch {
            return false
        }
    }

    /// Sends a command and reads its reply.
    func command(_ line: String) throws -> Reply {
        try send(line + "\r\n")
        return try readReply()
    }
}

struct ProcessResult: Sendable {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program (found on PATH when not absolute) and waits for it.
func runProgram(_ program: String, _ args: [String], stdin: String? = nil, environment: [String: String]? = nil) throws -> ProcessResult {
    let p = Process()
    if program.hasPrefix("/") {
        p.executableURL = URL(fileURLWithPath: program)
        p.arguments = args
    } else {
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [program] + args
    }
    if let environment { p.environment = environment }
    let out = Pipe(), err = Pipe(), inp = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = inp
    try p.run()
    if let stdin { inp.fileHandleForWriting.write(Data(stdin.utf8)) }
    try inp.fileHandleForWriting.close()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    let status = waitForExit(p, seconds: 120) ?? -1
    return ProcessResult(status: status, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}

/// Reaps a child ourselves, bounded. Foundation's `waitUntilExit` can hang
/// on Linux while its monitor thread blocks in wait4 on another live child.
func waitForExit(_ p: Process, seconds: Double) -> Int32? {
    let pid = p.processIdentifier
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid {
            return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        }
        if r == -1 && errno == ECHILD && !p.isRunning { return p.terminationStatus } // Foundation reaped it
        usleep(10_000)
    }
    return nil
}

/// A required external tool: a missing one fails the test (CI installs them).
func requireTool(_ name: String) throws {
    let r = try runProgram("sh", ["-c", "command -v \(name)"])
    if r.status != 0 {
        Issue.record("\(name) is not installed; run .ci/run or `make test-deps` (interop tests never skip)")
        throw ClientError.closed
    }
}

/// The repository root (for scripts under Tests/ and the built binary).
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// The `tern` executable built beside this test bundle.
func ternBinary() throws -> String {
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [dir.appendingPathComponent("tern"), dir.deletingLastPathComponent().appendingPathComponent("tern"),
                      repoRoot.appendingPathComponent(".build/debug/tern")] {
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate.path }
    }
    Issue.record("the tern executable is not built; run `swift build` before `swift test` (make test does)")
    throw ClientError.closed
}

/// Waits (bounded: 20 s) until `condition` holds; false if it never did.
/// `eventually` for a condition that itself awaits (blocking work kept off the pool).
func eventuallyAsync(_ condition: () async throws -> Bool) async -> Bool {
    for _ in 0..<1000 {
        if (try? await condition()) == true { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return false
}

func eventually(_ condition: () throws -> Bool) async -> Bool {
    for _ in 0..<1000 {
        if (try? condition()) == true { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return false
}

extension RawClient {
    /// One message through a whole transaction; returns the final reply.
    func sendMessage(from: String, to: [String], body: String, mailParams: String = "", rcptParams: String = "") throws -> Reply {
        try send("MAIL FROM:<\(from)>\(mailParams)\r\n" + to.map { "RCPT TO:<\($0)>\(rcptParams)\r\n" }.joined() + "DATA\r\n")
        let replies = try readReplies(to.count + 2)
        guard replies.last?.code == 354 else { return replies.first { $0.code >= 400 } ?? replies.last! }
        try send(body + ".\r\n")
        return try readReply()
    }
}

/// A child process we start for interop and must stop with SIGKILL (a child
/// inherits the test thread's blocked signals, so SIGTERM may never arrive).
final class ChildProcess: @unchecked Sendable {
    let process: Process
    let outputLock = NSLock()
    var output = ""

    init(_ executable: String, _ args: [String]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        pipe.fileHandleForReading.readabilityHandler = { [weak self] h in
            let d = h.availableData
            guard let self, !d.isEmpty else { return }
            self.outputLock.withLock { self.output += String(decoding: d, as: UTF8.self) }
        }
        try process.run()
    }

    var log: String { outputLock.withLock { output } }

    /// Waits (bounded) for a line matching `prefix`; returns the rest of it.
    func waitFor(_ prefix: String) async -> String? {
        for _ in 0..<500 {
            for line in log.split(separator: "\n") where line.hasPrefix(prefix) { return String(line.dropFirst(prefix.count)) }
            if !process.isRunning { return nil }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }

    func stop() {
        kill(process.processIdentifier, SIGKILL)
        _ = waitForExit(process, seconds: 10)
    }
}

/// aiosmtpd (Debian's python3-aiosmtpd, for /usr/bin/python3) as the receiving MTA.
struct Aiosmtpd {
    let child: ChildProcess
    let port: Int
    let outdir: URL

    static func start() async throws -> Aiosmtpd {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"),
              try runProgram("/usr/bin/python3", ["-c", "import aiosmtpd"]).status == 0 else {
            Issue.record("python3-aiosmtpd is not installed; run .ci/run or `make test-deps` (interop tests never skip)")
            throw ClientError.closed
        }
        let outdir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-aiosmtpd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: outdir, withIntermediateDirectories: true)
        let script = repoRoot.appendingPathComponent("Tests/TernIntegrationTests/interop/aiosmtpd_sink.py").path
        let child = try ChildProcess("/usr/bin/python3", [script, outdir.path])
        guard let p = await child.waitFor("PORT "), let port = Int(p) else {
            child.stop()
            Issue.record("aiosmtpd did not start: \(child.log)")
            throw ClientError.closed
        }
        return Aiosmtpd(child: child, port: port, outdir: outdir)
    }

    /// The messages received so far, in order.
    func messages() -> [[String: Any]] {
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: outdir.path)) ?? [])
            .filter { $0.hasSuffix(".json") }.sorted { Int($0.dropLast(5))! < Int($1.dropLast(5))! }
        return files.compactMap { f in
            (try? Data(contentsOf: outdir.appendingPathComponent(f))).flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
        }
    }
}

/// dnsmasq serving the test zone on a loopback port (never the system resolver).
struct Dnsmasq {
    let child: ChildProcess
    let port: Int

    static func start(_ records: [String]) async throws -> Dnsmasq {
        guard let exe = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            Issue.record("dnsmasq is not installed; run .ci/run or `make test-deps` (interop tests never skip)")
            throw ClientError.closed
        }
        let port = freeLoopbackUDPPort()
        // --local=/test/: names under .test that are not defined are NXDOMAIN, never forwarded.
        let child = try ChildProcess(exe, ["--no-daemon", "--port=\(port)", "--listen-address=127.0.0.1", "--bind-interfaces",
                                           "--no-resolv", "--no-hosts", "--local=/test/", "--pid-file=", "--user=root", "--log-queries"] + records)
        _ = await child.waitFor("dnsmasq: started")
        return Dnsmasq(child: child, port: port)
    }
}

/// Parses a DSN with Python's email package (interop/check_dsn.py).
func parseDSN(_ text: String) throws -> [String: Any] {
    let file = FileManager.default.temporaryDirectory.appendingPathComponent("dsn-\(UUID().uuidString).eml")
    try Data(text.utf8).write(to: file)
    let r = try runProgram("python3", [repoRoot.appendingPathComponent("Tests/TernIntegrationTests/interop/check_dsn.py").path, file.path])
    guard r.status == 0, let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
        Issue.record("check_dsn.py failed: \(r.stderr)")
        return [:]
    }
    return json
}
