// What the scheduler knows of delivery (docs/architecture.md): an agent that opens a
// connection for a destination domain, and connections that carry messages
// and say what happened to each recipient. Tests swap in a fake agent; the
// server uses SMTPDeliveryAgent. Outcomes are values, not errors.

import Foundation
import TernProtocol

/// One message as delivery sends it.
public struct OutboundMessage: Sendable {
    public var messageID: Int64
    public var queueID: String
    public var envelope: ClientEnvelope
    public var body: Data

    public init(messageID: Int64, queueID: String, envelope: ClientEnvelope, body: Data) {
        self.messageID = messageID
        self.queueID = queueID
        self.envelope = envelope
        self.body = body
    }
}

/// Where an attempt went, for the `attempt` row and DSNs.
public struct AttemptContext: Sendable, Equatable {
    public var mxHost: String?
    public var mxAddress: String?
    /// TLS protocol and cipher, or nil.
    public var tls: String?
    /// The server offered DSN (RFC 3461): NOTIFY went on with the message.
    public var remoteDSN: Bool
    /// The local address the connection left from (`attempt.source_address`).
    public var sourceAddress: String?
    /// The `[[source]]` it left from (`attempt.source`); nil: the kernel chose.
    public var source: String?

    public init(mxHost: String? = nil, mxAddress: String? = nil, tls: String? = nil, remoteDSN: Bool = false, sourceAddress: String? = nil,
                source: String? = nil) {
        self.source = source
        self.mxHost = mxHost
        self.mxAddress = mxAddress
        self.tls = tls
        self.remoteDSN = remoteDSN
        self.sourceAddress = sourceAddress
    }
}

public protocol DeliveryConnection: AnyObject, Sendable {
    var context: AttemptContext { get }
    /// Sends one message; an outcome for every recipient id of the envelope.
    func send(_ message: OutboundMessage) async -> [Int64: RecipientOutcome]
    /// Sends one message, and may start `next` in the same write as this
    /// one's final dot (RFC 2920 §3.1: message content may begin a pipelined
    /// group). A caller that passes `next` sends it next, on this connection,
    /// whatever else happens: the server may be waiting for its content.
    func send(_ message: OutboundMessage, next: OutboundMessage?) async -> [Int64: RecipientOutcome]
    /// The message whose commands went out with the previous one's content
    /// and that must be sent next (nil when none).
    var startedMessageID: Int64? { get }
    /// False once the connection is closed or in an unknown state.
    var isReusable: Bool { get }
    /// QUIT and close.
    func close() async
}

extension DeliveryConnection {
    /// Connections that do not pipeline across messages send one at a time.
    public func send(_ message: OutboundMessage, next: OutboundMessage?) async -> [Int64: RecipientOutcome] {
        await send(message)
    }
    public var startedMessageID: Int64? { nil }
}

public enum ConnectOutcome: Sendable {
    case connected(any DeliveryConnection)
    /// No connection: the reply applies to every recipient (4xx defer, 5xx bounce).
    case failed(SMTPReply, AttemptContext)
    /// The source's address cannot be bound (it is gone from this host):
    /// nothing was tried; the source leaves rotation and the mail goes from another.
    case sourceUnavailable(String)
    /// No MX host of the domain has an address of the source's family (an
    /// IPv6 source, an IPv4-only domain): nothing was tried. The reply is
    /// the deferral to record if no other source of the pool can go.
    case notFromSource(SMTPReply)
}

/// A local address outbound connections leave from (`[[source]]`), with
/// the name it gives in EHLO.
public struct OutboundSource: Sendable, Hashable, CustomStringConvertible {
    public var name: String
    public var address: IPAddress
    /// EHLO/HELO name; nil: the server's.
    public var ehlo: String?

    public init(name: String, address: IPAddress, ehlo: String? = nil) {
        self.name = name
        self.address = address
        self.ehlo = ehlo
    }

    public var description: String { "\(name) (\(address))" }
}

public protocol DeliveryAgent: Sendable {
    func connect(domain: String) async -> ConnectOutcome
    /// `requireTLS`: the destination's shaping limits want TLS; a server
    /// that does not offer it (or a failed handshake) defers, never plaintext.
    func connect(domain: String, requireTLS: Bool) async -> ConnectOutcome
    /// `source`: bind the connection to this local address and introduce
    /// ourselves with its EHLO name (nil: the kernel's choice).
    func connect(domain: String, requireTLS: Bool, source: OutboundSource?) async -> ConnectOutcome
}

extension DeliveryAgent {
    public func connect(domain: String, requireTLS: Bool) async -> ConnectOutcome { await connect(domain: domain) }
    public func connect(domain: String, requireTLS: Bool, source: OutboundSource?) async -> ConnectOutcome {
        await connect(domain: domain, requireTLS: requireTLS)
    }
}
