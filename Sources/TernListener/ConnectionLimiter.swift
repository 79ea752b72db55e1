// Counts open SMTP connections in total and per client network (an IPv4
// address, an IPv6 /64 by default: see ClientInfo.network), so that the
// listener can refuse one past the limits with 421 4.7.0 (like Postfix's
// smtpd_client_connection_count_limit, trusted networks exempt by default).
// Also the listener's budget of message text held in memory.

import NIOConcurrencyHelpers
import TernProtocol

public final class ConnectionLimiter: Sendable {
    public let maxTotal: Int
    public let maxPerAddress: Int
    private let counts = NIOLockedValueBox<(total: Int, perAddress: [String: Int])>((0, [:]))

    public init(maxTotal: Int, maxPerAddress: Int) {
        self.maxTotal = maxTotal
        self.maxPerAddress = maxPerAddress
    }

    public enum Refusal: Sendable { case total, perAddress }

    /// Takes a slot for a client network; nil when granted. `exempt` clients skip the per-network limit.
    public func acquire(_ address: String?, exempt: Bool) -> Refusal? {
        counts.withLockedValue { c in
            if c.total >= maxTotal { return .total }
            if let a = address, !exempt, c.perAddress[a, default: 0] >= maxPerAddress { return .perAddress }
            c.total += 1
            if let a = address { c.perAddress[a, default: 0] += 1 }
            return nil
        }
    }

    public func release(_ address: String?) {
        counts.withLockedValue { c in
            c.total -= 1
            if let a = address {
                let n = c.perAddress[a, default: 1] - 1
                c.perAddress[a] = n == 0 ? nil : n
            }
        }
    }

    public var open: Int { counts.withLockedValue { $0.total } }
}

/// Octets of message text that all sessions of a listener may hold in
/// memory at once (issue 15: 1,000 connections × 25 MB messages was 25 GB).
/// A session that would go past it drops its message text and answers
/// 452 4.3.1; while it is spent, DATA and BDAT are answered 452 4.3.1.
/// Bodies stay in memory rather than spooled to a file: they go into
/// SQLite in one write at commit, and a spool would write each twice.
public final class MessageMemoryBudget: Sendable {
    public let limit: Int
    private let used = NIOLockedValueBox(0)

    public init(limit: Int) { self.limit = limit }

    public var inUse: Int { used.withLockedValue { $0 } }
    public var exhausted: Bool { used.withLockedValue { $0 >= limit } }

    /// Takes `bytes` more; false (and nothing taken) when they do not fit.
    public func reserve(_ bytes: Int) -> Bool {
        used.withLockedValue { u in
            guard u + bytes <= limit else { return false }
            u += bytes
            return true
        }
    }

    public func release(_ bytes: Int) {
        guard bytes > 0 else { return }
        used.withLockedValue { $0 -= bytes }
    }
}
