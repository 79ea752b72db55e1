import Foundation
import NIOSSL
import Testing
@testable import TernDelivery
import TernProtocol
import TernRouting
import TernTestSupport

/// A self-signed certificate for `name` made with openssl (a program nobody here wrote).
func makeCertificate(_ name: String) throws -> (cert: String, key: String) {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-tls-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let cert = dir.appendingPathComponent("cert.pem").path, key = dir.appendingPathComponent("key.pem").path
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    p.arguments = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                   "-subj", "/CN=\(name)", "-addext", "subjectAltName=DNS:\(name)"]
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    var status: Int32 = 0
    waitpid(p.processIdentifier, &status, 0)
    guard status == 0 else { throw ClientFault.protocolError("openssl failed") }
    return (cert, key)
}

func serverContext(_ c: (cert: String, key: String)) throws -> NIOSSLContext {
    let config = TLSConfiguration.makeServerConfiguration(
        certificateChain: try NIOSSLCertificate.fromPEMFile(c.cert).map { .certificate($0) },
        privateKey: .privateKey(try NIOSSLPrivateKey(file: c.key, format: .pem)))
    return try NIOSSLContext(configuration: config)
}

func tlsAgent(_ port: Int, policy: TLSPolicy, ca: String? = nil, mxName: String = "mx.tls.test") throws -> SMTPDeliveryAgent {
    var config = ClientConfig(heloName: "tern.test")
    config.setAllTimeouts(5)
    config.tlsPolicy = policy
    config.tlsCAFile = ca
    let resolver = StaticResolver(mx: ["y.test": [MXRecord(preference: 10, host: mxName)]], hosts: [mxName: [IPAddress("127.0.0.1")!]])
    return try SMTPDeliveryAgent(router: Router(resolver: resolver, remotePort: port), config: config, group: group)
}

@Suite(.serialized) struct TLSTests {
    @Test func opportunisticTLSWhenOffered() async throws {
        let cert = try makeCertificate("mx.tls.test")
        var config = SinkServer.Config()
        config.tls = try serverContext(cert)
        let sink = try await SinkServer.start(config, group: group)
        defer { Task { await sink.stop() } }
        let c = try await connect(try tlsAgent(sink.port, policy: .may), "y.test")
        #expect(c.context.tls?.hasPrefix("TLSv1.") == true)
        #expect(codes(await c.send(message(["ok@y.test"]))) == ["delivered 250"])
        #expect(sink.messages.first?.tls == true)
        // After STARTTLS the client said EHLO again (RFC 3207 §4.2).
        #expect(sink.commands.filter { $0.hasPrefix("EHLO") }.count == 2)
        await c.close()
    }

    /// Issue 18: a destination whose shaping limits require TLS gets it
    /// even under the opportunistic policy, or waits (a deferral), never
    /// plaintext; with delivery TLS turned off it waits too.
    @Test func aDestinationThatRequiresTLSGetsItOrWaits() async throws {
        let plain = try await SinkServer.start(group: group)
        defer { Task { await plain.stop() } }
        switch await (try tlsAgent(plain.port, policy: .may)).connect(domain: "y.test", requireTLS: true) {
        case .connected(let c): Issue.record("connected without TLS"); await c.close()
        case .failed(let reply, _): #expect(reply.code / 100 == 4 && reply.enhanced?.klass == 4, "\(reply)")
        case .sourceUnavailable(let why): Issue.record("\(why)")
        case .notFromSource(let reply): Issue.record("\(reply)")
        }
        #expect(plain.messages.isEmpty)
        switch await (try tlsAgent(plain.port, policy: .none)).connect(domain: "y.test", requireTLS: true) {
        case .connected(let c): Issue.record("connected without TLS"); await c.close()
        case .failed(let reply, _): #expect(reply.code == 451 && reply.enhanced == EnhancedStatus(4, 7, 10), "\(reply)")
        case .sourceUnavailable(let why): Issue.record("\(why)")
        case .notFromSource(let reply): Issue.record("\(reply)")
        }
        var config = SinkServer.Config()
        config.tls = try serverContext(try makeCertificate("mx.tls.test"))
        let tls = try await SinkServer.start(config, group: group)
        defer { Task { await tls.stop() } }
        switch await (try tlsAgent(tls.port, policy: .may)).connect(domain: "y.test", requireTLS: true) {
        case .connected(let c):
            #expect(c.context.tls?.hasPrefix("TLSv1.") == true)
            await c.close()
        case .failed(let reply, _): Issue.record("\(reply)")
        case .sourceUnavailable(let why): Issue.record("\(why)")
        case .notFromSource(let reply): Issue.record("\(reply)")
        }
    }

    @Test func plaintextWhenNotOfferedOrBrokenUnderMay() async throws {
        let plain = try await SinkServer.start(group: group)
        defer { Task { await plain.stop() } }
        let c = try await connect(try tlsAgent(plain.port, policy: .may), "y.test")
        #expect(c.context.tls == nil)
        #expect(codes(await c.send(message(["ok@y.test"]))) == ["delivered 250"])
        await c.close()
        var broken = SinkServer.Config()
        broken.tls = try serverContext(try makeCertificate("mx.tls.test"))
        broken.breakTLS = true
        let sink = try await SinkServer.start(broken, group: group)
        defer { Task { await sink.stop() } }
        let fallback = try await connect(try tlsAgent(sink.port, policy: .may), "y.test")
        #expect(fallback.context.tls == nil)
        #expect(codes(await fallback.send(message(["ok@y.test"]))) == ["delivered 250"])
        #expect(sink.connections == 2) // the failed TLS attempt, then plaintext
        await fallback.close()
    }

    @Test func requireAndVerify() async throws {
        let plain = try await SinkServer.start(group: group)
        defer { Task { await plain.stop() } }
        guard case .failed(let noTLS, _) = await (try tlsAgent(plain.port, policy: .require)).connect(domain: "y.test") else {
            Issue.record("require must refuse a server without STARTTLS"); return
        }
        #expect(noTLS.code == 451 && noTLS.enhanced == EnhancedStatus(4, 7, 10))
        #expect(plain.messages.isEmpty)

        let cert = try makeCertificate("mx.tls.test")
        var config = SinkServer.Config()
        config.tls = try serverContext(cert)
        let sink = try await SinkServer.start(config, group: group)
        defer { Task { await sink.stop() } }
        // require: any certificate will do.
        let required = try await connect(try tlsAgent(sink.port, policy: .require), "y.test")
        #expect(required.context.tls != nil)
        await required.close()
        // verify: trusted root and matching MX name.
        let verified = try await connect(try tlsAgent(sink.port, policy: .verify, ca: cert.cert), "y.test")
        #expect(codes(await verified.send(message(["ok@y.test"]))) == ["delivered 250"])
        await verified.close()
        // verify: a name that is not on the certificate, or a root we do not trust.
        guard case .failed(let wrongName, _) = await (try tlsAgent(sink.port, policy: .verify, ca: cert.cert, mxName: "other.tls.test")).connect(domain: "y.test") else {
            Issue.record("a name mismatch must fail"); return
        }
        #expect(wrongName.enhanced == EnhancedStatus(4, 7, 5))
        guard case .failed(let untrusted, _) = await (try tlsAgent(sink.port, policy: .verify)).connect(domain: "y.test") else {
            Issue.record("a self-signed certificate must not verify against the system roots"); return
        }
        #expect(untrusted.enhanced == EnhancedStatus(4, 7, 5))
    }
}
