import Foundation
import Testing
import TernProtocol
@testable import TernScheduler

/// Issue 18 item 4: every reply of the corpus gets the category a postmaster gives it.
@Suite struct BounceClassifierTests {
    struct Entry {
        var category: String, reply: SMTPReply, source: String, line: Int
    }

    static func corpus() throws -> (entries: [Entry], sources: [String: String]) {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/bounce-corpus.txt")
        var entries: [Entry] = [], sources: [String: String] = [:]
        for (n, line) in try String(contentsOf: url, encoding: .utf8).split(separator: "\n").enumerated() {
            if line.hasPrefix("#") { continue }
            if line.hasPrefix("@") {
                let parts = line.dropFirst().split(separator: " ", maxSplits: 1)
                sources[String(parts[0])] = String(parts[1])
                continue
            }
            let f = line.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            guard f.count == 5, let code = Int(f[1]) else { Issue.record("line \(n + 1): \(line)"); continue }
            let enhanced = f[2].isEmpty ? nil : EnhancedStatus(parsing: Substring(f[2]))
            entries.append(Entry(category: f[0], reply: SMTPReply(code, enhanced, f[3]), source: f[4], line: n + 1))
        }
        return (entries, sources)
    }

    @Test func theCorpusIsLargeCitedAndCoversEveryCategory() throws {
        let (entries, sources) = try BounceClassifierTests.corpus()
        #expect(entries.count >= 150)
        for e in entries { #expect(sources[e.source] != nil, "line \(e.line) cites \(e.source), which no @ line defines") }
        #expect(Set(entries.map(\.category)) == Set(BounceCategory.allCases.map(\.rawValue)))
        // The big providers and common MTAs are all there.
        for key in ["G", "M", "MO", "Y", "A", "P", "E", "MX"] { #expect(entries.contains { $0.source == key }, "\(key)") }
    }

    @Test func everyReplyOfTheCorpusGetsItsCategory() throws {
        let classifier = BounceClassifier()
        var wrong: [String] = []
        let (entries, _) = try BounceClassifierTests.corpus()
        for e in entries {
            let got = classifier.classify(e.reply)?.rawValue ?? "nil"
            if got != e.category { wrong.append("line \(e.line): \(e.category) ≠ \(got): \(e.reply)") }
        }
        #expect(wrong.isEmpty, "\(wrong.count) of \(entries.count):\n\(wrong.joined(separator: "\n"))")
    }

    @Test func successesHaveNoCategoryAndUserRulesComeFirst() throws {
        let shipped = BounceClassifier()
        #expect(shipped.classify(SMTPReply(250, nil, "ok")) == nil)
        let r = SMTPReply(550, EnhancedStatus(5, 7, 1), "Rejected by local rule 42")
        #expect(shipped.classify(r) == .policyAuth)
        let custom = BounceClassifier(custom: [BounceRule(try ReplyMatcher(code: .klass(5), pattern: #"local rule \d+"#), .spamContent)])
        #expect(custom.classify(r) == .spamContent)
        #expect(custom.classify(SMTPReply(550, EnhancedStatus(5, 1, 1), "User unknown")) == .invalidRecipient)
    }

    @Test func matchersParseCodesAndRefuseBadOnes() throws {
        #expect(ReplyMatcher.code(parsing: "4xx") == .klass(4))
        #expect(ReplyMatcher.code(parsing: "421") == .exact(421))
        #expect(ReplyMatcher.code(parsing: "42") == nil)
        #expect(throws: ReplyMatcherError.self) { try ReplyMatcher(enhanced: "4.x.1") }
        #expect(throws: ReplyMatcherError.self) { try ReplyMatcher(enhanced: "3.1.1") }
        #expect(throws: ReplyMatcherError.self) { try ReplyMatcher(pattern: "(unclosed") }
        let m = try ReplyMatcher(enhanced: "x.7")
        #expect(m.matches(SMTPReply(421, EnhancedStatus(4, 7, 28), "x")) && m.matches(SMTPReply(550, EnhancedStatus(5, 7, 1), "x")))
        #expect(!m.matches(SMTPReply(550, EnhancedStatus(5, 1, 1), "x")) && !m.matches(SMTPReply(550, nil, "x")))
    }
}
