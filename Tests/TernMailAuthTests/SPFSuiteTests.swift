// The RFC 7208 test suite (pyspf's test/rfc7208-tests.yml, fetched by
// tools/fetch-test-data): every scenario's zone data served by a DNS server
// on loopback (spf_suite_dns.py), asked by Tern's own c-ares resolver, and
// every expected result (and explanation) checked.

import Foundation
import Testing
import TernMailAuth
import TernProtocol
import TernRouting
#if canImport(Glibc)
import Glibc
#endif

struct SuiteScenario: Decodable {
    struct Case: Decodable {
        var helo: String
        var host: String
        var mailfrom: String
        var result: Results
        var explanation: String?
        var spec: String?
    }

    /// One expected result, or several acceptable ones.
    struct Results: Decodable {
        var accepted: [String]
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let one = try? c.decode(String.self) { accepted = [one] } else { accepted = try c.decode([String].self) }
        }
    }

    var description: String
    var port: Int
    var tests: [String: Case]
}

/// The suite's DNS server: started once, its scenarios read from its first line.
final class SuiteDNS: @unchecked Sendable {
    let process = Process()
    let stdin = Pipe()
    let scenarios: [SuiteScenario]

    init(suite: String) throws {
        let stdout = Pipe()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("spf_suite_dns.py").path
        process.arguments = [script, suite]
        process.standardInput = stdin
        process.standardOutput = stdout
        try process.run()
        var line = Data()
        let handle = stdout.fileHandleForReading
        while true {
            let byte = handle.readData(ofLength: 1)
            if byte.isEmpty || byte == Data([0x0A]) { break }
            line.append(byte)
        }
        scenarios = try JSONDecoder().decode([SuiteScenario].self, from: line)
    }

    deinit {
        try? stdin.fileHandleForWriting.close()
        var status: Int32 = 0
        waitpid(process.processIdentifier, &status, 0)
    }
}

/// The suite file, fetched by tools/fetch-test-data (part of `make test`); its absence fails the test.
func suitePath() -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent(".build-data/pyspf/rfc7208-tests.yml").path
}

@Suite struct SPFSuiteTests {
    @Test func theWholeRFC7208SuitePasses() async throws {
        let path = suitePath()
        try #require(FileManager.default.fileExists(atPath: path), "run tools/fetch-test-data (make test does) to fetch \(path)")
        let dns = try SuiteDNS(suite: path)
        var passed = 0, total = 0
        var failures: [String] = []
        for scenario in dns.scenarios {
            let resolver = try CAresResolver(servers: ["127.0.0.1:\(scenario.port)"])
            defer { resolver.shutdown() }
            let checker = SPFChecker(dns: resolver, receiver: "receiver.test", clock: { 1_700_000_000_000 })
            for (name, t) in scenario.tests.sorted(by: { $0.key < $1.key }) {
                total += 1
                guard let ip = IPAddress(t.host) else {
                    failures.append("\(name): bad host \(t.host)")
                    continue
                }
                let verdict = await checker.check(ip: ip, mailFrom: t.mailfrom, helo: t.helo)
                var ok = t.result.accepted.contains(verdict.result.rawValue)
                if let expected = t.explanation, ok, (verdict.explanation ?? "DEFAULT") != expected {
                    ok = false
                }
                if ok {
                    passed += 1
                } else {
                    failures.append("\(name) (§\(t.spec ?? "?"), \(scenario.description)): expected \(t.result.accepted.joined(separator: "|"))"
                        + (t.explanation.map { " \"\($0)\"" } ?? "") + ", got \(verdict.result.rawValue)"
                        + (verdict.explanation.map { " \"\($0)\"" } ?? "") + " — \(verdict.reason); steps: \(verdict.steps.joined(separator: "; "))")
                }
            }
        }
        for f in failures { Issue.record(Comment(rawValue: f)) }
        print("RFC 7208 suite: \(passed) of \(total) passed")
        #expect(total == 203)
        #expect(passed == total)
    }
}
