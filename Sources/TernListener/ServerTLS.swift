// The listeners' TLS certificate: one context shared by every listener,
// replaced as a whole on reload (SIGHUP) so that new handshakes use the new
// certificate while connections already open keep theirs.

import NIOConcurrencyHelpers
import NIOSSL

/// Which protocol versions and TLS 1.2 cipher suites the listeners offer.
/// The default is a modern profile: TLS 1.2 and 1.3, and for TLS 1.2 only
/// ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305): no
/// CBC suites (LUCKY13), no static RSA key exchange, no SHA-1 MACs. TLS 1.3
/// suites are all AEAD. (swift-nio-ssl does not expose BoringSSL's
/// server-preference option; with every suite offered AEAD and forward
/// secret, the client's pick among them is always a strong one.)
public struct TLSProfile: Sendable, Equatable {
    public var minimumVersion: TLSVersion = .tlsv12
    /// OpenSSL/BoringSSL cipher-list syntax, for TLS 1.2.
    public var ciphers: String = TLSProfile.modernCiphers

    public static let modernCiphers = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    public init() {}
}

public final class ServerTLS: Sendable {
    public let certificatePath: String?
    public let keyPath: String?
    public let profile: TLSProfile
    private let box: NIOLockedValueBox<NIOSSLContext>

    /// A fixed context (tests); `reload` keeps it.
    public init(context: NIOSSLContext) {
        certificatePath = nil
        keyPath = nil
        profile = TLSProfile()
        box = NIOLockedValueBox(context)
    }

    /// Loads a PEM certificate chain and key; TLS per `profile`.
    public init(certificate: String, key: String, profile: TLSProfile = TLSProfile()) throws {
        certificatePath = certificate
        keyPath = key
        self.profile = profile
        box = NIOLockedValueBox(try ServerTLS.makeContext(certificate: certificate, key: key, profile: profile))
    }

    /// The context for the next handshake.
    public var context: NIOSSLContext { box.withLockedValue { $0 } }

    /// Reads the files again. On error the current certificate stays in use.
    public func reload() throws {
        guard let certificatePath, let keyPath else { return }
        let fresh = try ServerTLS.makeContext(certificate: certificatePath, key: keyPath, profile: profile)
        box.withLockedValue { $0 = fresh }
    }

    public static func makeContext(certificate: String, key: String, profile: TLSProfile = TLSProfile()) throws -> NIOSSLContext {
        try NIOSSLContext(configuration: configuration(certificate: certificate, key: key, profile: profile))
    }

    /// A server configuration from PEM files and the profile (also the HTTP listener's).
    public static func configuration(certificate: String, key: String, profile: TLSProfile = TLSProfile()) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
        tls.minimumTLSVersion = profile.minimumVersion
        tls.cipherSuites = profile.ciphers
        return tls
    }
}

/// How a negotiated protocol is written in `Received:` and the log.
func tlsDescription(_ version: TLSVersion?) -> String {
    switch version {
    case .tlsv13?: return "TLSv1.3"
    case .tlsv12?: return "TLSv1.2"
    case let v?: return "\(v)"
    case nil: return "TLS"
    }
}
