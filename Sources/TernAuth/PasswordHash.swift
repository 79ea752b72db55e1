// Password hashes for SMTP AUTH accounts: PBKDF2-HMAC-SHA256 (RFC 8018)
// from swift-crypto's CryptoExtras, salted, slow, and self-describing:
//
//     $pbkdf2-sha256$ROUNDS$SALT$HASH        (SALT and HASH base64)
//
// so the work factor can be raised later while old hashes still verify.

import Crypto
import CryptoExtras
import TernProtocol

public struct PasswordHasher: Sendable {
    /// OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
    public static let defaultRounds = 600_000
    static let scheme = "pbkdf2-sha256"
    static let saltBytes = 16
    static let hashBytes = 32

    public var rounds: Int

    /// `rounds` below the default are for tests only.
    public init(rounds: Int = PasswordHasher.defaultRounds) {
        precondition(rounds >= 1)
        self.rounds = rounds
    }

    /// A new hash of `password` with a fresh random salt.
    public func hash(_ password: String) -> String {
        var rng = SystemRandomNumberGenerator()
        let salt = (0..<PasswordHasher.saltBytes).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let derived = PasswordHasher.derive(password, salt: salt, rounds: rounds)
        return "$\(PasswordHasher.scheme)$\(rounds)$\(Base64.encode(salt))$\(Base64.encode(derived))"
    }

    /// The parts of a stored hash; nil when it is not one of ours.
    static func parse(_ stored: String) -> (rounds: Int, salt: [UInt8], hash: [UInt8])? {
        let parts = stored.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0].isEmpty, parts[1] == scheme,
              let rounds = Int(parts[2]), rounds >= 1, rounds <= 100_000_000,
              let salt = Base64.decode(parts[3]), !salt.isEmpty,
              let hash = Base64.decode(parts[4]), !hash.isEmpty else { return nil }
        return (rounds, salt, hash)
    }

    public static func isValidHash(_ stored: String) -> Bool { parse(stored) != nil }

    /// True when `password` matches `stored`. Compares in constant time; an
    /// unparsable hash never matches.
    public static func verify(_ password: String, against stored: String) -> Bool {
        guard let p = parse(stored) else { return false }
        let derived = derive(password, salt: p.salt, rounds: p.rounds, length: p.hash.count)
        guard derived.count == p.hash.count else { return false }
        var diff: UInt8 = 0
        for (a, b) in zip(derived, p.hash) { diff |= a ^ b }
        return diff == 0
    }

    /// A hash that matches no password, costing what a real one costs: checked
    /// for unknown user names so that timing does not tell which names exist.
    static let decoy = "$\(scheme)$\(defaultRounds)$\(Base64.encode([UInt8](repeating: 0x5A, count: saltBytes)))$"
        + Base64.encode([UInt8](repeating: 0, count: hashBytes))

    static func derive(_ password: String, salt: [UInt8], rounds: Int, length: Int = hashBytes) -> [UInt8] {
        // Cannot fail for SHA-256 with these lengths; an empty result never verifies.
        guard let key = try? KDF.Insecure.PBKDF2.deriveKey(
            from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: length, unsafeUncheckedRounds: rounds)
        else { return [] }
        return key.withUnsafeBytes { Array($0) }
    }
}
