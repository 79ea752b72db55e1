// Counts open SMTP connections in total and per client address, so that the
// listener can refuse one past the limits with 421 4.7.0 (like Postfix's
// smtpd_client_connection_count_limit, trusted networks exempt by default).

import NIOConcurrencyHelpers
import TernProtocol

public final class ConnectionLimiter: Sendable {
    public let maxTotal: Int
    public let maxPerAddress: Int
    private let counts = NIOLockedValueBox<(total: Int, perAddress: [IPAddress: Int])>((0, [:]))

    public init(maxTotal: Int, maxPerAddress: Int) {
        self.maxTotal = maxTotal
        self.maxPerAddress = maxPerAddress
    }

    public enum Refusal: Sendable { case total, perAddress }

    /// Takes a slot; nil when granted. `exempt` clients skip the per-address limit.
    public func acquire(_ address: IPAddress?, exempt: Bool) -> Refusal? {
        counts.withLockedValue { c in
            if c.total >= maxTotal { return .total }
            if let a = address, !exempt, c.perAddress[a, default: 0] >= maxPerAddress { return .perAddress }
            c.total += 1
            if let a = address { c.perAddress[a, default: 0] += 1 }
            return nil
        }
    }

    public func release(_ address: IPAddress?) {
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
