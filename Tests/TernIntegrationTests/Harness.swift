// Test harness: a real listener + intake + store on an ephemeral loopback
// port, a blocking raw-socket SMTP client, and a runner for external programs.

import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import TernIntake
@testable import TernListener
import TernProtocol
@testable import TernStore
#if canImport(Glibc)
import Glibc
#endif

final class TestServer: Sendable {
    let store: Store
    let listener: SMTPListener
    let group: MultiThreadedEventLoopGroup
    let port: Int
    let dbPath: String

    static func start(_ edit: (inout ListenerConfig) -> Void = { _ in }) async throws -> TestServer {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-it-\(UUID().uuidString)")
        let dbPath = dir.appendingPathComponent("tern.sqlite").path
        let store = try Store(path: dbPath)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let intake = Intake(store: store, hostname: "mx.test", logger: logger)
        var session = SessionConfig(hostname: "mx.test")
        session.relay = RelayPolicy(relayDomains: ["local.test"])
        var config = ListenerConfig(session: session)
        config.listen = [("127.0.0.1", 0)]
        config.shutdownGraceSeconds = 5
        edit(&config)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let listener = SMTPListener(config: config, intake: intake, group: group, logger: logger)
        try await listener.start()
        let port = listener.boundAddresses.first!.port!
        return TestServer(store: store, listener: listener, group: group, port: port, dbPath: dbPath)
    }

    private init(store: Store, listener: SMTPListener, group: MultiThreadedEventLoopGroup, port: Int, dbPath: String) {
        self.store = store
        self.listener = listener
        self.group = group
        self.port = port
        self.dbPath = dbPath
    }

    func stop() async {
        await listener.stop()
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

struct ProcessResult {
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
    p.waitUntilExit()
    return ProcessResult(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
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
