// The SMTP listener service: binds each configured address, creates one
// SMTPServerHandler per connection (after the connection limits), and on
// graceful shutdown stops accepting, lets open transactions finish within a
// deadline, then closes what is left. Runs inside a ServiceGroup.

import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import TernIntake
import TernMailAuth
import TernProtocol

/// One address to listen on, and what for.
public struct ListenAddress: Sendable, Equatable {
    public var role: ListenerRole
    public var host: String
    /// 0 picks a free port (see `boundAddresses`).
    public var port: Int
    /// Offer AUTH without TLS to loopback clients on this listener.
    public var plaintextAuth: Bool
    /// This listener's bare-LF policy (nil: the session default).
    public var bareNewline: BareNewlinePolicy? = nil
    /// DKIM-sign mail from this listener's authenticated and trusted
    /// clients (false: never; mail relayed for the world is never signed).
    public var dkimSign = true
    /// Checking SPF, DKIM and DMARC on mail from other MTAs (relay listeners,
    /// untrusted and unauthenticated clients); nil: the configuration's default.
    public var verify: VerifyPolicy? = nil
    /// Refuse MAIL (550 5.7.23) when SPF fails (opt-in; needs verify on).
    public var spfReject = false

    public init(_ host: String, _ port: Int, role: ListenerRole = .relay, plaintextAuth: Bool = false) {
        self.role = role
        self.host = host
        self.port = port
        self.plaintextAuth = plaintextAuth
    }
}

/// What a listener does with the verdicts of SPF, DKIM and DMARC.
public enum VerifyPolicy: String, Sendable, CaseIterable {
    /// No checks.
    case off
    /// Check, record (Authentication-Results:, the message row), accept.
    case record
    /// As record, and DMARC p=reject is refused with 550 5.7.1 at the end of DATA; quarantine is kept and marked.
    case enforce
}

public struct ListenerConfig: Sendable {
    public var listen: [ListenAddress] = [ListenAddress("127.0.0.1", 2525)]
    public var session: SessionConfig
    public var commandTimeoutSeconds: Int64 = 300
    public var dataTimeoutSeconds: Int64 = 180
    public var maxConnections: Int = 1000
    public var maxConnectionsPerClient: Int = 50
    /// Prefix lengths of a "client" for the per-client limits (connections,
    /// AUTH failures): one IPv4 address, one IPv6 /64.
    public var clientIPv4Prefix = 32
    public var clientIPv6Prefix = 64
    /// Longest a connection may last, whatever it does (a client that
    /// drips one byte per timeout would hold it for ever).
    public var maxSessionSeconds: Int64 = 3600
    /// Octets of message text all sessions may hold in memory together.
    public var messageMemory = 512 << 20
    /// Trusted networks skip the per-client limit (as Postfix exempts $mynetworks).
    public var trustedExemptFromClientLimit: Bool = true
    /// How long open transactions may run on after shutdown begins.
    public var shutdownGraceSeconds: Int64 = 30
    /// The origin recorded for mail from `relay` listeners (submission listeners record `submission`).
    public var origin: Origin = .smtp
    /// Offer STARTTLS with this certificate (RFC 3207); required by `submissions` listeners.
    public var tls: ServerTLS? = nil
    /// Checks AUTH credentials; without one AUTH is not offered and submission listeners refuse MAIL.
    public var authenticator: (any Authenticator)? = nil
    /// Valid recipients of relay domains, loaded from the store at start and
    /// kept fresh while the listener runs.
    public var recipients: RecipientTable? = nil
    /// Seconds between checks of the recipient table for changes.
    public var recipientRefreshSeconds: Int64 = 5
    /// Told the bound addresses once every listener is bound (delivery
    /// uses them never to connect to this server itself).
    public var onBound: (@Sendable ([SocketAddress]) -> Void)? = nil
    /// Checks mail from other MTAs (nil: no checks on any listener).
    public var verifier: MailVerifier? = nil
    /// The policy of relay listeners that do not name theirs.
    public var verifyPolicy: VerifyPolicy = .record

    public init(session: SessionConfig) { self.session = session }
}

public final class SMTPListener: Service, Sendable {
    public let config: ListenerConfig
    let intake: Intake
    let group: EventLoopGroup
    let logger: Logger
    let registry = SessionRegistry()
    public let limiter: ConnectionLimiter
    public let budget: MessageMemoryBudget
    private let channels = BoundChannels()
    /// Set when shutdown begins: new connections are told 421 4.3.2.
    private let draining = NIOLockedValueBox(false)
    private let recipientsVersion = NIOLockedValueBox<String?>(nil)

    public init(config: ListenerConfig, intake: Intake, group: EventLoopGroup, logger: Logger = Logger(label: "tern.smtpd")) {
        var config = config
        config.session.textAllocator = .messageText
        self.config = config
        self.intake = intake
        self.group = group
        self.logger = logger
        self.limiter = ConnectionLimiter(maxTotal: config.maxConnections, maxPerAddress: config.maxConnectionsPerClient)
        self.budget = MessageMemoryBudget(limit: config.messageMemory)
    }

    /// The addresses actually bound (after `start`), in the order of `config.listen`.
    public var boundAddresses: [SocketAddress] { channels.all.compactMap(\.localAddress) }

    /// The handler settings for one listen address.
    func settings(for address: ListenAddress) throws -> SMTPServerHandler.Settings {
        if address.role.implicitTLS && config.tls == nil {
            throw ListenerError("the \(address.role.rawValue) listener \(address.host):\(address.port) needs a TLS certificate (tls_cert, tls_key)")
        }
        var session = config.session
        session.recipients = config.recipients
        session.role = address.role
        session.startTLS = config.tls != nil && !address.role.implicitTLS
        session.authEnabled = config.authenticator != nil
        session.plaintextAuthOnLoopback = address.plaintextAuth
        if let b = address.bareNewline { session.bareNewline = b }
        // Submission listeners take mail from users, not from other MTAs: never checked.
        let policy = address.role == .relay && config.verifier != nil ? address.verify ?? config.verifyPolicy : .off
        session.checkSender = policy != .off && address.spfReject
        return SMTPServerHandler.Settings(
            session: session, commandTimeout: .seconds(config.commandTimeoutSeconds),
            dataTimeout: .seconds(config.dataTimeoutSeconds),
            origin: address.role == .relay ? config.origin : .submission, dkimSign: address.dkimSign, tls: config.tls,
            authenticator: config.authenticator, maxSession: .seconds(config.maxSessionSeconds), budget: budget,
            verifier: policy == .off ? nil : config.verifier, verifyPolicy: policy)
    }

    /// Loads the recipient table when it changed since `version`; returns the version loaded.
    @discardableResult
    func refreshRecipients(since version: String?) -> String? {
        guard let table = config.recipients else { return nil }
        let store = intake.store
        do {
            let now = try store.relayRecipientsVersion()
            if now == version { return version }
            table.replace(addresses: try store.relayRecipients(), catchAll: try store.relayDomainPolicies())
            logger.info("relay recipient table loaded", metadata: ["recipients": "\(table.count)"])
            return now
        } catch {
            logger.error("cannot read the relay recipient table; keeping the copy in memory", metadata: ["error": "\(error)"])
            return version
        }
    }

    /// Binds every listen address.
    public func start() async throws {
        recipientsVersion.withLockedValue { $0 = refreshRecipients(since: nil) }
        let prepared = try config.listen.map { ($0, try settings(for: $0)) } // every error before the first bind
        for (address, settings) in prepared {
            let channel = try await bootstrap(settings).bind(host: address.host, port: address.port).get()
            channels.append(channel)
            logger.notice("listening", metadata: [
                "address": "\(channel.localAddress.map { "\($0)" } ?? "?")", "role": "\(address.role.rawValue)",
            ])
        }
        config.onBound?(boundAddresses)
    }

    private func bootstrap(_ settings: SMTPServerHandler.Settings) -> ServerBootstrap {
        let intake = self.intake, registry = self.registry, limiter = self.limiter, logger = self.logger
        let relay = config.session.relay
        let exempt = config.trustedExemptFromClientLimit
        let v4 = config.clientIPv4Prefix, v6 = config.clientIPv6Prefix
        let hostname = config.session.hostname
        let draining = self.draining
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 512)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            // Replies a client leaves unread past 64 KiB stop the session
            // from decoding more commands (see SMTPServerHandler.writeBlocked).
            .childChannelOption(.writeBufferWaterMark, value: ChannelOptions.Types.WriteBufferWaterMark(low: 16 * 1024, high: 64 * 1024))
            .childChannelInitializer { channel in
                if draining.withLockedValue({ $0 }) {
                    let reply = SMTPReply(421, .systemNotAccepting, "\(hostname) Service shutting down, try again later")
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(RefusalHandler(reply: reply))
                    }
                }
                let ipText = channel.remoteAddress?.ipAddress ?? ""
                let ip = IPAddress(ipText)
                let trusted = relay.isTrusted(ip)
                let network = ip.map { $0.masked(ipv4Prefix: v4, ipv6Prefix: v6).description }
                if let refusal = limiter.acquire(network, exempt: trusted && exempt) {
                    let why = refusal == .total ? "too many connections" : "too many connections from your address"
                    logger.warning("connection refused", metadata: ["peer": "\(ipText)", "reason": "\(why)"])
                    let reply = SMTPReply(421, .tempSecurity, "\(hostname) Error: \(why), try again later")
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(RefusalHandler(reply: reply))
                    }
                }
                let client = ClientInfo(address: ip, addressText: ip?.unmapped.description ?? ipText, trusted: trusted, network: network)
                let handler = SMTPServerHandler(settings: settings, client: client, intake: intake, registry: registry,
                                                logger: logger, onClose: { limiter.release(network) })
                return channel.eventLoop.makeCompletedFuture {
                    // RFC 8314: on a submissions listener TLS starts with the first byte.
                    if settings.session.role.implicitTLS, let tls = settings.tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context))
                    }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
    }

    /// Stops accepting, lets sessions finish their transaction for up to the
    /// grace period, then closes the rest.
    public func stop() async {
        // Keep listening, but only to say 421 4.3.2, until open sessions are done.
        draining.withLockedValue { $0 = true }
        registry.beginShutdown()
        let deadline = NIODeadline.now() + .seconds(config.shutdownGraceSeconds)
        // Cancellation (the service group's own deadline) ends the wait at once.
        while registry.count > 0 && NIODeadline.now() < deadline && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(20))
        }
        if registry.count > 0 {
            logger.warning("closing sessions still open at the shutdown deadline", metadata: ["sessions": "\(registry.count)"])
            registry.forceCloseAll()
        }
        for channel in channels.all { try? await channel.close() }
    }

    /// Service entry: serve until graceful shutdown is requested.
    public func run() async throws {
        try await start()
        let refresher = config.recipients == nil ? nil : Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(config.recipientRefreshSeconds))
                let v = recipientsVersion.withLockedValue { $0 }
                let fresh = refreshRecipients(since: v)
                recipientsVersion.withLockedValue { $0 = fresh }
            }
        }
        defer { refresher?.cancel() }
        try? await gracefulShutdown()
        logger.info("shutting down: no new connections; finishing open transactions")
        await stop()
    }
}

public struct ListenerError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

/// The bound server channels.
final class BoundChannels: Sendable {
    private let box = NIOLockedValueBox<[Channel]>([])
    func append(_ c: Channel) { box.withLockedValue { $0.append(c) } }
    var all: [Channel] { box.withLockedValue { $0 } }
}

/// Answers a connection over the limits with one reply, then closes it.
final class RefusalHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let reply: SMTPReply

    init(reply: SMTPReply) { self.reply = reply }

    func channelActive(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 96)
        buffer.writeString(reply.wireText)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {} // ignore anything the client sends
}
