import Testing
@testable import TernProtocol

@Suite struct IPTests {
    @Test func parseAndPrint() {
        #expect(IPAddress("192.0.2.1")?.description == "192.0.2.1")
        #expect(IPAddress("2001:db8::1")?.description == "2001:db8::1")
        #expect(IPAddress("::1")?.description == "::1")
        #expect(IPAddress("::")?.description == "::")
        #expect(IPAddress("::ffff:192.0.2.1")?.unmapped.description == "192.0.2.1")
        #expect(IPAddress("2001:db8:0:0:1:0:0:1")?.description == "2001:db8::1:0:0:1")
        #expect(IPAddress("fe80::1%eth0")?.description == "fe80::1")
        for bad in ["256.1.1.1", "1.2.3", "01.2.3.4", "1:2:3:4:5:6:7:8:9", "1::2::3", "gg::1", "", "1.2.3.4.5", ":::"] {
            #expect(IPAddress(bad) == nil, "\(bad)")
        }
    }

    @Test func networks() throws {
        let lo = try #require(IPNetwork("127.0.0.0/8"))
        #expect(lo.contains(IPAddress("127.4.5.6")!))
        #expect(!lo.contains(IPAddress("128.0.0.1")!))
        #expect(lo.contains(IPAddress("::ffff:127.0.0.1")!)) // mapped IPv4
        let v6 = try #require(IPNetwork("2001:db8::/32"))
        #expect(v6.contains(IPAddress("2001:db8:ffff::1")!))
        #expect(!v6.contains(IPAddress("2001:db9::1")!))
        #expect(!v6.contains(IPAddress("10.0.0.1")!))
        let odd = try #require(IPNetwork("10.0.0.0/9"))
        #expect(odd.contains(IPAddress("10.127.0.1")!))
        #expect(!odd.contains(IPAddress("10.128.0.1")!))
        #expect(IPNetwork("10.0.0.1")?.prefixLength == 32)
        #expect(IPNetwork("10.0.0.0/33") == nil)
        #expect(IPNetwork("0.0.0.0/0")!.contains(IPAddress("8.8.8.8")!))
    }

    @Test func relayPolicy() {
        let p = RelayPolicy(relayDomains: ["local.test", ".sub.test", "BÜCHER.test"], trustedNetworks: IPNetwork.loopback)
        #expect(p.isTrusted(IPAddress("127.0.0.1")))
        #expect(p.isTrusted(IPAddress("::1")))
        #expect(!p.isTrusted(IPAddress("192.0.2.1")))
        #expect(!p.isTrusted(nil))
        #expect(p.isRelayDomain("local.test"))
        #expect(p.isRelayDomain("a.sub.test"))
        #expect(!p.isRelayDomain("sub.test"))
        #expect(!p.isRelayDomain("xlocal.test"))
        #expect(p.isRelayDomain("xn--bcher-kva.test"))
    }
}
