// The listeners' TLS certificate: one context shared by every listener,
// replaced as a whole on reload (SIGHUP) so that new handshakes use the new
// certificate while connections already open keep theirs.

import NIOConcurrencyHelpers
import NIOSSL

public final class ServerTLS: Sendable {
    public let certificatePath: String?
    public let keyPath: String?
    private let box: NIOLockedValueBox<NIOSSLContext>

    /// A fixed context (tests); `reload` keeps it.
    public init(context: NIOSSLContext) {
        certificatePath = nil
        keyPath = nil
        box = NIOLockedValueBox(context)
    }

    /// Loads a PEM certificate chain and key; TLS 1.2 and 1.3 only.
    public init(certificate: String, key: String) throws {
        certificatePath = certificate
        keyPath = key
        box = NIOLockedValueBox(try ServerTLS.makeContext(certificate: certificate, key: key))
    }

    /// The context for the next handshake.
    public var context: NIOSSLContext { box.withLockedValue { $0 } }

    /// Reads the files again. On error the current certificate stays in use.
    public func reload() throws {
        guard let certificatePath, let keyPath else { return }
        let fresh = try ServerTLS.makeContext(certificate: certificatePath, key: keyPath)
        box.withLockedValue { $0 = fresh }
    }

    public static func makeContext(certificate: String, key: String) throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
        tls.minimumTLSVersion = .tlsv12
        return try NIOSSLContext(configuration: tls)
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
