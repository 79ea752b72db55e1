// What the scheduler knows of delivery (DESIGN.md): an agent that opens a
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

    public init(mxHost: String? = nil, mxAddress: String? = nil, tls: String? = nil, remoteDSN: Bool = false) {
        self.mxHost = mxHost
        self.mxAddress = mxAddress
        self.tls = tls
        self.remoteDSN = remoteDSN
    }
}

public protocol DeliveryConnection: AnyObject, Sendable {
    var context: AttemptContext { get }
    /// Sends one message; an outcome for every recipient id of the envelope.
    func send(_ message: OutboundMessage) async -> [Int64: RecipientOutcome]
    /// False once the connection is closed or in an unknown state.
    var isReusable: Bool { get }
    /// QUIT and close.
    func close() async
}

public enum ConnectOutcome: Sendable {
    case connected(any DeliveryConnection)
    /// No connection: the reply applies to every recipient (4xx defer, 5xx bounce).
    case failed(SMTPReply, AttemptContext)
}

public protocol DeliveryAgent: Sendable {
    func connect(domain: String) async -> ConnectOutcome
}
