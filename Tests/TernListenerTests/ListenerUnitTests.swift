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
        let a = IPAddress("192.0.2.1"), b = IPAddress("192.0.2.2")
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
