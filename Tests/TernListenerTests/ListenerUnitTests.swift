import Foundation
import Logging
import NIOCore
import NIOEmbedded
import Testing
@testable import TernIntake
@testable import TernListener
import TernProtocol
import TernStore
import CTernSystem

@Suite struct ConnectionLimiterTests {
    @Test func totalAndPerAddress() {
        let l = ConnectionLimiter(maxTotal: 3, maxPerAddress: 2)
        let a: String? = "192.0.2.1/32", b: String? = "192.0.2.2/32"
        #expect(l.acquire(a, exempt: false) == nil)
        #expect(l.acquire(a, exempt: false) == nil)
        #expect(l.acquire(a, exempt: false) == .perAddress)
        #expect(l.acquire(a, exempt: true) == nil)      // trusted clients skip the per-address limit
        #expect(l.acquire(b, exempt: false) == .total)
        l.release(a)
        #expect(l.acquire(b, exempt: false) == nil)
        #expect(l.open == 3)
        for _ in 0..<2 { l.release(a) }
        l.release(b)
        #expect(l.open == 0)
    }
}

/// Issue 15, item 6: per-network limits, the memory budget, session length.
@Suite struct ResourceBudgetTests {
    @Test func clientsAreCountedByNetwork() {
        // IPv6 per /64 (one host has all of it), IPv4 per address; both configurable.
        let a = IPAddress("2001:db8:1:2::10")!, b = IPAddress("2001:db8:1:2:ffff::1")!, c = IPAddress("2001:db8:1:3::1")!
        #expect(a.masked(ipv4Prefix: 32, ipv6Prefix: 64) == b.masked(ipv4Prefix: 32, ipv6Prefix: 64))
        #expect(a.masked(ipv4Prefix: 32, ipv6Prefix: 64) != c.masked(ipv4Prefix: 32, ipv6Prefix: 64))
        #expect(a.masked(ipv4Prefix: 32, ipv6Prefix: 64).description == "2001:db8:1:2::/64")
        #expect(IPAddress("192.0.2.7")!.masked(ipv4Prefix: 32, ipv6Prefix: 64).description == "192.0.2.7/32")
        #expect(IPAddress("192.0.2.7")!.masked(ipv4Prefix: 24, ipv6Prefix: 64).description == "192.0.2.0/24")
        #expect(IPAddress("::ffff:192.0.2.7")!.masked(ipv4Prefix: 32, ipv6Prefix: 64).description == "192.0.2.7/32")
        let info = ClientInfo(address: b, addressText: "\(b)", trusted: false)
        #expect(info.network == "2001:db8:1:2::/64")
        let l = ConnectionLimiter(maxTotal: 10, maxPerAddress: 2)
        let key = { (ip: IPAddress) in ip.masked(ipv4Prefix: 32, ipv6Prefix: 64).description }
        #expect(l.acquire(key(a), exempt: false) == nil)
        #expect(l.acquire(key(b), exempt: false) == nil)
        #expect(l.acquire(key(IPAddress("2001:db8:1:2::99")!), exempt: false) == .perAddress)
        #expect(l.acquire(key(c), exempt: false) == nil)
    }

    @Test func theMemoryBudgetRefusesAndReleases() {
        let budget = MessageMemoryBudget(limit: 100)
        #expect(budget.reserve(60) && !budget.reserve(50) && budget.inUse == 60)
        #expect(budget.reserve(40) && budget.exhausted)
        budget.release(100)
        #expect(budget.inUse == 0 && !budget.exhausted)
    }

    func handler(_ edit: (inout SMTPServerHandler.Settings) -> Void) throws -> (EmbeddedChannel, Store) {
        let (c, _, s, _) = try HandlerTests().makeHandlerKeepingIt(edit)
        try c.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 25)).wait()
        _ = try HandlerTests().output(c)
        return (c, s)
    }

    /// Past the budget a message's text is dropped and its end answered
    /// 452 4.3.1; while the budget is spent, DATA is answered 452 at once;
    /// every octet is given back when the transaction ends.
    @Test func messageTextOverTheBudgetIs452() throws {
        let budget = MessageMemoryBudget(limit: 10_000)
        let (channel, store) = try handler { $0.budget = budget }
        defer { store.close() }
        let big = String(repeating: String(repeating: "x", count: 98) + "\r\n", count: 200) // 20,000 octets
        try channel.writeInbound(ByteBuffer(string: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n" + big + ".\r\n"))
        let out = try HandlerTests().output(channel)
        #expect(out.hasSuffix("452 4.3.1 Error: insufficient system resources for message text, try again later\r\n"), "\(out)")
        #expect(budget.inUse == 0)
        // Another session holds the budget: DATA is refused before any text.
        #expect(budget.reserve(10_000))
        try channel.writeInbound(ByteBuffer(string: "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n"))
        #expect(try HandlerTests().output(channel).hasSuffix("452 4.3.1 Error: insufficient system resources for message text, try again later\r\n"))
        budget.release(10_000)
        try channel.writeInbound(ByteBuffer(string: "DATA\r\nsmall\r\n.\r\n"))
        channel.embeddedEventLoop.run()
        #expect(try HandlerTests().output(channel).hasPrefix("354"))
    }

    /// A client that keeps the connection busy (one NOOP before each
    /// timeout) is closed when the session's time is up.
    @Test func aSessionEndsAfterItsMaximumDuration() throws {
        let (channel, store) = try handler { $0.maxSession = .seconds(60); $0.commandTimeout = .seconds(30) }
        defer { store.close() }
        for _ in 0..<3 {
            channel.embeddedEventLoop.advanceTime(by: .seconds(25))
            try channel.writeInbound(ByteBuffer(string: "NOOP\r\n"))
        }
        let out = try HandlerTests().output(channel)
        #expect(out.contains("421 4.4.2 mx.test Error: session too long, closing"), "\(out)")
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
    }
}

@Suite struct HandlerTests {
    func makeHandler(_ edit: (inout SMTPServerHandler.Settings) -> Void = { _ in }) throws -> (EmbeddedChannel, SessionRegistry, Store) {
        let (c, r, s, _) = try makeHandlerKeepingIt(edit)
        return (c, r, s)
    }

    func makeHandlerKeepingIt(_ edit: (inout SMTPServerHandler.Settings) -> Void = { _ in }) throws -> (EmbeddedChannel, SessionRegistry, Store, SMTPServerHandler) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tern-lt-\(UUID().uuidString)/t.sqlite").path
        let store = try Store(path: path)
        var logger = Logger(label: "t")
        logger.logLevel = .critical
        var session = SessionConfig(hostname: "mx.test")
        session.relay = RelayPolicy(relayDomains: ["local.test"])
        var settings = SMTPServerHandler.Settings(session: session, commandTimeout: .seconds(300), dataTimeout: .seconds(180), origin: .smtp)
        edit(&settings)
        let registry = SessionRegistry()
        let handler = SMTPServerHandler(settings: settings, client: ClientInfo(address: IPAddress("127.0.0.1"), addressText: "127.0.0.1", trusted: true),
                                        intake: Intake(store: store, hostname: "mx.test", logger: logger), registry: registry,
                                        logger: logger, onClose: {})
        let channel = EmbeddedChannel(handler: handler)
        return (channel, registry, store, handler)
    }

    func output(_ channel: EmbeddedChannel) throws -> String {
        var out = ""
        while var b = try channel.readOutbound(as: ByteBuffer.self) { out += b.readString(length: b.readableBytes) ?? "" }
        return out
    }

    @Test func greetsAndAnswersAPipelinedGroupInOrder() throws {
        let (channel, registry, store) = try makeHandler()
        defer { store.close() }
        try channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 25)).wait()
        #expect(try output(channel) == "220 mx.test ESMTP Tern\r\n")
        #expect(registry.count == 1)
        try channel.writeInbound(ByteBuffer(string: "NOOP\r\nRSET\r\nVRFY x\r\nQUIT\r\nNOOP\r\n"))
        #expect(try output(channel) == "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n221 2.0.0 Bye\r\n")
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive) // closed after QUIT; the NOOP after it was never answered
        #expect(registry.count == 0)
    }

    /// Issue 15: a client pipelining HELP without reading the replies grew
    /// the server to 1.1 GB. While the outbound buffer is over its high-water
    /// mark (the channel is not writable) no command is decoded and reading
    /// stops; once the client reads, the session goes on where it stopped.
    @Test func unreadRepliesStopDecodingAndReading() throws {
        let (channel, _, store, handler) = try makeHandlerKeepingIt { $0.session.maxJunkCommands = .max }
        defer { store.close() }
        try channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 25)).wait()
        _ = try output(channel)
        try channel.writeInbound(ByteBuffer(string: "NOOP\r\n"))
        #expect(try output(channel) == "250 2.0.0 Ok\r\n")
        channel.isWritable = false
        let flood = String(repeating: "HELP\r\n", count: 1000)
        try channel.writeInbound(ByteBuffer(string: flood))
        #expect(try output(channel) == "") // nothing decoded, nothing queued
        #expect(handler.readingPaused)
        // More input while blocked is held, not answered; reading stays off.
        try channel.writeInbound(ByteBuffer(string: String(repeating: "HELP\r\n", count: 20_000)))
        #expect(try output(channel) == "")
        #expect(handler.readingPaused)
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        let replies = try output(channel).components(separatedBy: "\r\n").filter { $0.hasPrefix("214 ") }
        #expect(replies.count == 21_000)
        #expect(!handler.readingPaused)
    }

    @Test func idleTimeoutFiresOnTheLoopClock() throws {
        let (channel, _, store) = try makeHandler { $0.commandTimeout = .seconds(5) }
        defer { store.close() }
        try channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 25)).wait()
        _ = try output(channel)
        channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        try channel.writeInbound(ByteBuffer(string: "NOOP\r\n")) // activity re-arms the timer
        channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        #expect(try output(channel) == "250 2.0.0 Ok\r\n")
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(try output(channel) == "421 4.4.2 mx.test Error: timeout exceeded\r\n")
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
    }

    @Test func shutdownTellsIdleSessions() throws {
        let (channel, registry, store) = try makeHandler()
        defer { store.close() }
        try channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 25)).wait()
        _ = try output(channel)
        registry.beginShutdown()
        channel.embeddedEventLoop.run()
        #expect(try output(channel) == "421 4.3.2 mx.test Service shutting down, try again later\r\n")
        #expect(!channel.isActive)
    }

    @Test func refusalHandlerAnswersAndCloses() throws {
        let channel = EmbeddedChannel(handler: RefusalHandler(reply: SMTPReply(421, .tempSecurity, "mx.test Error: too many connections")))
        try channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 25)).wait()
        channel.embeddedEventLoop.run()
        #expect(try output(channel) == "421 4.7.0 mx.test Error: too many connections\r\n")
        #expect(!channel.isActive)
    }
}

/// Message text buffers: small ones from malloc, large ones mappings of
/// their own, grown across the boundary and within mappings; what was
/// written survives every move.
@Suite struct MessageTextAllocatorTests {
    @Test func aBufferGrowsFromMallocIntoAMappingIntact() {
        var buffer = ByteBufferAllocator.messageText.buffer(capacity: 16 * 1024)
        var expected: [UInt8] = []
        var n = 0
        while buffer.readableBytes < 3 << 20 {
            let line = Array("line \(n) ".utf8) + Array(repeating: UInt8(ascii: "a") + UInt8(n % 26), count: n % 300) + [13, 10]
            buffer.writeBytes(line)
            expected += line
            n += 1
        }
        #expect(buffer.capacity >= 3 << 20)
        #expect(Array(buffer.readableBytesView) == expected)
        // A copy is a separate block (copy-on-write through the allocator's copy).
        var copy = buffer
        copy.writeString("more")
        #expect(Array(buffer.readableBytesView) == expected)
        #expect(Array(copy.readableBytesView) == expected + Array("more".utf8))
        // A small one stays small and works the same.
        var small = ByteBufferAllocator.messageText.buffer(capacity: 0)
        small.writeString("Subject: x\r\n")
        #expect(small.readString(length: small.readableBytes) == "Subject: x\r\n")
    }
}

/// Large blocks (message buffers and SQLite's, tern_system.c): whole huge
/// pages with the kernel's advice set, grown in place up to the end of
/// their last huge page, and every byte kept across each move and across
/// the boundary between malloc'd and mapped blocks.
@Suite struct LargeBlockTests {
    static let hugePage = 2 << 20
    /// A kernel built without transparent huge pages refuses the advice.
    static let kernelHasTHP = FileManager.default.fileExists(atPath: "/sys/kernel/mm/transparent_hugepage/enabled")

    /// The VmFlags line of /proc/self/smaps for the mapping holding `address`.
    static func vmFlags(of address: UnsafeMutableRawPointer) -> [Substring]? {
        // Read to the end: /proc reports a size of 0.
        guard let data = FileHandle(forReadingAtPath: "/proc/self/smaps")?.readDataToEndOfFile() else { return nil }
        let smaps = String(decoding: data, as: UTF8.self)
        let a = UInt(bitPattern: address)
        var inside = false
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let range = fields.first, range.contains("-"), !range.hasSuffix(":") {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inside = bounds.count == 2 && bounds[0] <= a && a < bounds[1]
            } else if inside, fields.first == "VmFlags:" {
                return Array(fields.dropFirst())
            }
        }
        return nil
    }

    static func fill(_ p: UnsafeMutableRawPointer, _ count: Int, seed: UInt8) {
        let b = p.assumingMemoryBound(to: UInt8.self)
        for i in stride(from: 0, to: count, by: 4093) { b[i] = seed &+ UInt8(truncatingIfNeeded: i / 4093) }
        b[count - 1] = seed ^ 0x5A
    }

    static func check(_ p: UnsafeMutableRawPointer, _ count: Int, seed: UInt8) -> Bool {
        let b = p.assumingMemoryBound(to: UInt8.self)
        for i in stride(from: 0, to: count - 1, by: 4093) where b[i] != seed &+ UInt8(truncatingIfNeeded: i / 4093) { return false }
        return b[count - 1] == seed ^ 0x5A
    }

    @Test func aLargeMessageBufferIsWholeHugePagesAdvisedAndGrowsInPlaceToItsEnd() throws {
        let size = (10 << 20) + 300
        let p = try #require(tern_buf_allocate(size))
        let length = tern_buf_test_map_length(p)
        #expect(length % Self.hugePage == 0 && length >= size + 16 && length < size + 16 + Self.hugePage)
        #expect(Self.vmFlags(of: p)?.contains("hg") == Self.kernelHasTHP, "MADV_HUGEPAGE: \(Self.vmFlags(of: p) ?? [])")
        Self.fill(p, size, seed: 7)
        // Within the mapping: the same block.
        let same = try #require(tern_buf_reallocate(p, size, length - 16))
        #expect(same == p)
        // Past it: moved or grown by mremap, whole huge pages again, the bytes kept.
        let grown = try #require(tern_buf_reallocate(same, size, length + 1))
        #expect(tern_buf_test_map_length(grown) % Self.hugePage == 0 && tern_buf_test_map_length(grown) > length)
        #expect(Self.vmFlags(of: grown)?.contains("hg") == Self.kernelHasTHP)
        #expect(Self.check(grown, size, seed: 7))
        tern_buf_deallocate(grown)
        // Between 256 KiB and 2 MiB: a mapping of its own, no advice.
        let mid = try #require(tern_buf_allocate(1 << 20))
        #expect(tern_buf_test_map_length(mid) == (1 << 20) + 16)
        #expect(Self.vmFlags(of: mid)?.contains("hg") == false)
        tern_buf_deallocate(mid)
    }

    @Test func sqliteBlocksKeepTheirBytesAndSizeAcrossTheThreshold() throws {
        #expect(tern_sqlite_test_malloc(0) == nil)
        var p = try #require(tern_sqlite_test_malloc(1000))
        #expect(tern_buf_test_map_length(p) == 0 && tern_sqlite_test_size(p) == 1000)
        Self.fill(p, 1000, seed: 1)
        // Small to large: a mapping of whole huge pages, advised.
        p = try #require(tern_sqlite_test_realloc(p, 3 << 20))
        #expect(tern_buf_test_map_length(p) == 4 << 20 && tern_sqlite_test_size(p) == 3 << 20)
        #expect(Self.vmFlags(of: p)?.contains("hg") == Self.kernelHasTHP)
        #expect(Self.check(p, 1000, seed: 1))
        Self.fill(p, 3 << 20, seed: 2)
        // Within the mapping: in place, the size SQLite asked for reported.
        let before = p
        p = try #require(tern_sqlite_test_realloc(p, (4 << 20) - 16))
        #expect(p == before && tern_sqlite_test_size(p) == (4 << 20) - 16)
        // Past it: grown, the bytes kept.
        p = try #require(tern_sqlite_test_realloc(p, 9 << 20))
        #expect(tern_buf_test_map_length(p) == 10 << 20 && tern_sqlite_test_size(p) == 9 << 20)
        #expect(Self.check(p, 3 << 20, seed: 2))
        // Large to small: malloc again, the first bytes kept.
        Self.fill(p, 500, seed: 3)
        p = try #require(tern_sqlite_test_realloc(p, 500))
        #expect(tern_buf_test_map_length(p) == 0 && tern_sqlite_test_size(p) == 500)
        #expect(Self.check(p, 500, seed: 3))
        // Small stays small.
        p = try #require(tern_sqlite_test_realloc(p, 64 << 10))
        #expect(tern_buf_test_map_length(p) == 0 && Self.check(p, 500, seed: 3))
        #expect(tern_sqlite_test_realloc(p, 0) == nil) // freed, as SQLite's realloc to 0
        tern_sqlite_test_free(nil)
    }
}
