import Foundation
import Logging
import NIOCore
import NIOEmbedded
import Testing
@testable import TernIntake
@testable import TernListener
import TernProtocol
import TernStore

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
