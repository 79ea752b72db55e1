// SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, and
// listener roles (RFC 6409 submission, RFC 8314 implicit TLS): the pure
// parts. Verifying a password is the Authenticator's job (TernAuth); the
// session machine only decodes the exchange and applies the result.

/// What a listener is for.
public enum ListenerRole: String, Sendable, CaseIterable {
    /// Port 25 style: the relay rules; AUTH offered (over TLS) but optional.
    case relay
    /// Port 587 (RFC 6409): AUTH required before MAIL.
    case submission
    /// Port 465 (RFC 8314): TLS from the first byte, AUTH required.
    case submissions

    public var requiresAuth: Bool { self != .relay }
    public var implicitTLS: Bool { self == .submissions }
}

public enum SASLMechanism: String, Sendable, CaseIterable {
    case plain = "PLAIN"
    case login = "LOGIN"
}

/// A user name and password from an AUTH exchange. Its description never
/// shows the password, so it cannot reach a log by accident.
public struct Credentials: Sendable, Equatable, CustomStringConvertible {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    public var description: String { "Credentials(\(username), password: <redacted>)" }
}

/// An authenticated account: its name and the envelope senders it may use.
public struct AuthIdentity: Sendable, Equatable {
    public var name: String
    /// `user@example.com` (that address), `@example.com` (any address at the
    /// domain) or `*` (any sender). Compared case-insensitively.
    public var allowedSenders: [String]

    public init(name: String, allowedSenders: [String]) {
        self.name = name
        self.allowedSenders = allowedSenders
    }

    /// May this account use `sender` as MAIL FROM? The null reverse-path is
    /// always allowed (a client may send its own bounces and receipts).
    public func mayUse(sender: Mailbox?) -> Bool {
        guard let sender else { return true }
        let address = (sender.localPart + "@" + sender.normalizedDomain).lowercased()
        let domain = "@" + sender.normalizedDomain.lowercased()
        return allowedSenders.contains { entry in
            let e = entry.lowercased()
            return e == "*" || e == domain || e == address
        }
    }
}

/// What the Authenticator made of credentials.
public enum AuthOutcome: Sendable, Equatable {
    case success(AuthIdentity)
    /// Wrong name or password: 535 5.7.8.
    case failure
    /// Too many failures from this client: 454 4.7.0, not checked.
    case throttled
    /// The account store could not answer: 454 4.7.0.
    case unavailable
}

/// Checks credentials (the listener calls it off its event loop).
public protocol Authenticator: Sendable {
    func authenticate(_ credentials: Credentials, mechanism: SASLMechanism, client: ClientInfo) async -> AuthOutcome
}

public enum SASLError: Error, Equatable {
    /// Not valid base64 (RFC 4954: 501 5.5.2).
    case badEncoding
    /// Decoded, but not the mechanism's shape.
    case malformed
    /// PLAIN with an authorization identity other than the user (no proxy logins).
    case authzidNotPermitted
}

public enum SASL {
    /// RFC 4616: `[authzid] NUL authcid NUL passwd`, base64 (already decoded here).
    public static func decodePlain(_ bytes: [UInt8]) -> Result<Credentials, SASLError> {
        let parts = bytes.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[1].isEmpty, !parts[2].isEmpty,
              let authzid = String(validating: parts[0], as: UTF8.self),
              let user = String(validating: parts[1], as: UTF8.self),
              let password = String(validating: parts[2], as: UTF8.self) else {
            return .failure(.malformed)
        }
        if !authzid.isEmpty && authzid != user { return .failure(.authzidNotPermitted) }
        return .success(Credentials(username: user, password: password))
    }

    /// A LOGIN step's text (user name or password), base64 already decoded.
    public static func decodeLoginField(_ bytes: [UInt8]) -> Result<String, SASLError> {
        guard !bytes.isEmpty, !bytes.contains(0), let s = String(validating: bytes, as: UTF8.self) else {
            return .failure(.malformed)
        }
        return .success(s)
    }
}

/// Base64 (RFC 4648 §4) as SASL uses it: padded, no line breaks, strict.
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let values: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { t[Int(c)] = UInt8(i) }
        return t
    }()

    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        let input = Array(bytes)
        var out = [UInt8]()
        out.reserveCapacity((input.count + 2) / 3 * 4)
        var i = 0
        while i < input.count {
            let b0 = input[i], b1 = i + 1 < input.count ? input[i + 1] : 0, b2 = i + 2 < input.count ? input[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(i + 1 < input.count ? alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(i + 2 < input.count ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// nil unless `text` is canonical padded base64.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 4 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(chars.count / 4 * 3)
        var i = 0
        while i < chars.count {
            let pad = (chars[i + 3] == UInt8(ascii: "=") ? 1 : 0) + (chars[i + 2] == UInt8(ascii: "=") ? 1 : 0)
            // Padding only at the very end, and "x=y=" is not padding.
            if pad > 0 && i + 4 != chars.count { return nil }
            if pad == 1 && chars[i + 2] == UInt8(ascii: "=") { return nil }
            var v = [UInt8](repeating: 0, count: 4)
            for k in 0..<(4 - pad) {
                let x = values[Int(chars[i + k])]
                if x == 0xFF { return nil }
                v[k] = x
            }
            out.append(v[0] << 2 | v[1] >> 4)
            if pad < 2 { out.append(v[1] << 4 | v[2] >> 2) }
            if pad < 1 { out.append(v[2] << 6 | v[3]) }
            // Non-canonical trailing bits are an error (RFC 4648 §3.5).
            if pad == 2 && v[1] & 0x0F != 0 { return nil }
            if pad == 1 && v[2] & 0x03 != 0 { return nil }
            i += 4
        }
        return out
    }
}
