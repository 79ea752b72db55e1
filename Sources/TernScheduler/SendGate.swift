// The seam where pacing plugs in: before it opens a connection to a
// destination, and before each message it sends over one, the scheduler asks
// its gate "may I send now to this destination from this source?". Traffic
// shaping (per-provider rates and connection limits, backing off on 421s)
// and IP warm-up (daily caps per source) are gates; the default lets
// everything through, which is Tern's behaviour without them.
//
// A gate decides synchronously and must be cheap: it is asked with the
// scheduler's state locked (for connections) and once per message. It must
// not call back into the scheduler. A "not before" answer is never a
// failure: nothing is bounced or counted as an attempt; the recipients stay
// queued (or are given back untouched) and the scheduler wakes up at the
// time the gate named.

import TernProtocol

/// What the scheduler is about to do.
public struct SendRequest: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Open a new connection (and start a worker) for the destination.
        case connection
        /// Send one more message over an open connection.
        case message
    }

    public var kind: Kind
    /// The recipient domain the mail goes to (shaping groups domains into
    /// providers itself).
    public var destination: String
    /// The local source the mail leaves from; nil: the kernel's choice
    /// (Tern has one implicit source until source pools exist).
    public var source: String?
    /// For connections: the worker that holds it (the scheduler's id), so
    /// that `ended` and `rekey` concern exactly that connection.
    public var worker: Int?

    public init(_ kind: Kind, destination: String, source: String? = nil, worker: Int? = nil) {
        self.kind = kind
        self.destination = destination
        self.source = source
        self.worker = worker
    }
}

public enum SendPermission: Sendable, Equatable {
    case go
    /// Not now; ask again at this time (Unix milliseconds).
    case notBefore(Int64)
    /// A connection: the destination has as many open as it may; ask again
    /// when one of them ends (the scheduler does, as a worker finishes).
    case busy
}

/// What a destination's connections must keep to (nil: the scheduler's own).
public struct ConnectionTerms: Sendable, Equatable {
    public var messagesPerConnection: Int?
    /// Recipients per transaction: a message with more goes in several.
    public var recipientsPerMessage: Int?
    /// The connection must use TLS (the agent defers rather than send in plaintext).
    public var requireTLS = false

    public init(messagesPerConnection: Int? = nil, recipientsPerMessage: Int? = nil, requireTLS: Bool = false) {
        self.messagesPerConnection = messagesPerConnection
        self.recipientsPerMessage = recipientsPerMessage
        self.requireTLS = requireTLS
    }
}

public protocol SendGate: Sendable {
    /// Whether `request` may go ahead at `now`. A `.go` for a message is
    /// taken as that message being sent; a `.go` for a connection counts it
    /// open until `ended`.
    func admit(_ request: SendRequest, now: Int64) -> SendPermission
    /// A connection the gate admitted has ended (or was never opened).
    func ended(_ request: SendRequest, now: Int64)
    /// What the destination answered: a refusal of an opening or of a
    /// transaction (one call per distinct reply), or a transaction's success.
    func observe(_ request: SendRequest, reply: SMTPReply, mxHost: String?, now: Int64)
    /// The terms of a connection to the destination.
    func terms(_ request: SendRequest, now: Int64) -> ConnectionTerms
    /// A connection admitted for a domain is open and its MX host known:
    /// when that makes the domain part of a provider the gate did not know
    /// it was in, the connection is counted against the provider from now
    /// on, if the provider has room (`.go`); otherwise the worker closes it
    /// unused and gives its mail back.
    func rekey(_ request: SendRequest, mxHost: String?, now: Int64) -> SendPermission
    /// How many messages the destination may take now without waiting (nil:
    /// no rate limit): a worker claims no more than that, so that a slow
    /// rate does not mean claiming a batch and giving most of it back.
    func allowance(_ request: SendRequest, now: Int64) -> Int?
}

extension SendGate {
    public func ended(_ request: SendRequest, now: Int64) {}
    public func observe(_ request: SendRequest, reply: SMTPReply, mxHost: String?, now: Int64) {}
    public func terms(_ request: SendRequest, now: Int64) -> ConnectionTerms { ConnectionTerms() }
    public func rekey(_ request: SendRequest, mxHost: String?, now: Int64) -> SendPermission { .go }
    public func allowance(_ request: SendRequest, now: Int64) -> Int? { nil }
}

/// No pacing: every connection and message may go now.
public struct OpenGate: SendGate {
    public init() {}
    public func admit(_ request: SendRequest, now: Int64) -> SendPermission { .go }
}
