// `tern api token add|list|remove`: bearer tokens for the HTTP listener
// (issue 20). A token is shown once, alone on stdout's last line; only its
// SHA-256 is stored.

import ArgumentParser
import Foundation
import TernHTTP
import TernStore

struct APICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api", abstract: "The HTTP listener's bearer tokens ([http] listen, docs/operations.md).", subcommands: [Token.self])

    struct Token: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Bearer tokens.", subcommands: [Add.self, List.self, Remove.self])

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Make a token; it is printed once, alone on the last line (only its SHA-256 is kept).",
                discussion: "Scopes: inject (mail injection only), read (/metrics, the read API and the dashboard; no injection), admin (everything). Exit 65 when NAME exists.")
            @OptionGroup var common: DatabaseOptions
            @Argument(help: "A name for the token (who or what uses it).") var name: String
            @Option(help: "inject, read or admin.") var scope: String = "read"

            func run() async throws {
                guard let scope = APIScope(rawValue: scope) else { throw fail("--scope must be inject, read or admin", code: 64) }
                guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.@".contains($0) }) else {
                    throw fail("NAME may hold letters, digits and - _ . @", code: 64)
                }
                let (store, _) = try openExisting(common)
                defer { store.close() }
                let token = APITokens.generate()
                let added: Bool
                do { added = try await store.addAPIToken(name: name, hash: APITokens.hash(token), scope: scope.rawValue, now: nowMillis()) } catch {
                    throw fail("\(error)", code: 74)
                }
                guard added else { throw fail("a token named \(name) exists (tern api token remove \(name) first)", code: 65) }
                FileHandle.standardError.write(Data("tern: token \(name) (scope \(scope.rawValue)) added; it is shown once:\n".utf8))
                print(token)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Tokens by name, scope, creation and last use (never the tokens).")
            @OptionGroup var common: DatabaseOptions
            @Option(help: "table or json.") var format: ReportFormat = .table

            func run() async throws {
                let (store, _) = try openExisting(common)
                defer { store.close() }
                let tokens: [StoredAPIToken]
                do { tokens = try store.apiTokens() } catch { throw fail("\(error)", code: 74) }
                if format == .json {
                    print(JSON.array(tokens.map { t in
                        .object([("name", .string(t.name)), ("scope", .string(t.scope)), ("created_at", .int64(t.createdAt)),
                                 ("last_used_at", jsonInt64(t.lastUsedAt))])
                    }).text)
                } else {
                    print(tokens.isEmpty ? "(no tokens)" : renderTable(header: ["NAME", "SCOPE", "CREATED", "LAST USED"], rows: tokens.map {
                        [$0.name, $0.scope, time($0.createdAt), time($0.lastUsedAt)]
                    }), terminator: tokens.isEmpty ? "\n" : "")
                }
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Revoke a token (at once, also in a running server). Exit 67 for an unknown name.")
            @OptionGroup var common: DatabaseOptions
            @Argument(help: "The token's name.") var name: String

            func run() async throws {
                let (store, _) = try openExisting(common)
                defer { store.close() }
                let removed: Bool
                do { removed = try await store.removeAPIToken(name: name) } catch { throw fail("\(error)", code: 74) }
                guard removed else { throw fail("no token named \(name)", code: 67) }
                print("removed \(name)")
            }
        }
    }
}
