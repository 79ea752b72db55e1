// swift-tools-version: 6.1
// Tern: a mail transfer agent whose durable queue is a SQLite database.
// One module per role (docs/architecture.md). Targets are listed in the
// order they may import each other: a target imports only targets above it.
// Protocol and message are pure (no I/O, no clock, no SQLite); the store is
// the only module that opens SQLite; the scheduler reaches delivery only
// through the DeliveryAgent protocol; the CLI is the composition root.
import PackageDescription

let nioCore = Target.Dependency.product(name: "NIOCore", package: "swift-nio")
let nioPosix = Target.Dependency.product(name: "NIOPosix", package: "swift-nio")
let logging = Target.Dependency.product(name: "Logging", package: "swift-log")
let lifecycle = Target.Dependency.product(name: "ServiceLifecycle", package: "swift-service-lifecycle")
let metrics = Target.Dependency.product(name: "Metrics", package: "swift-metrics")

let package = Package(
    name: "Tern",
    products: [
        .executable(name: "tern", targets: ["tern"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        // Pure SMTP: commands, replies, addresses, framing, and both sides' session state machines (server and client).
        .target(name: "TernProtocol", dependencies: [nioCore]),
        // RFC 5322 headers: parse, Received:, dates, queue ids.
        .target(name: "TernMessage"),
        // The metrics Tern counts (swift-metrics handles, made once; no backend: no cost but a call).
        .target(name: "TernMetrics", dependencies: [metrics]),
        // Routing: static routes, MX planning, the Resolver protocol and its c-ares implementation.
        .systemLibrary(name: "CAres", path: "Sources/CAres", pkgConfig: "libcares", providers: [.apt(["libc-ares-dev"])]),
        .target(name: "TernRouting", dependencies: ["TernProtocol", "CAres", "TernMetrics", logging]),
        // C: mallopt, SQLite's memory statistics, and the VFS shim that gathers the writer's WAL writes.
        .target(name: "CTernSystem", path: "Sources/CTernSystem", linkerSettings: [.linkedLibrary("sqlite3")]),
        // The only module that opens SQLite: migrations, group-commit writer, queries.
        .target(name: "TernStore", dependencies: [
            .product(name: "GRDB", package: "GRDB.swift"), .product(name: "GRDBSQLite", package: "GRDB.swift"), "TernMessage", "CTernSystem", "TernMetrics", logging,
        ]),
        // A Swift concurrency task executor on a SwiftNIO event loop.
        .target(name: "TernConcurrency", dependencies: [nioCore]),
        // Delivery: the DeliveryAgent protocol, the hop-by-hop agent, and the SwiftNIO I/O of the client session.
        .target(name: "TernDelivery", dependencies: [
            "TernProtocol", "TernMessage", "TernRouting", "TernConcurrency", nioCore, nioPosix, logging, .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        // Scheduler: the pass loop and worker pool, leases, settlement (outcomes, suppression, DSNs), the send gate,
        // retries and expiry, queue administration; delivery only through DeliveryAgent.
        .target(name: "TernScheduler", dependencies: ["TernDelivery", "TernRouting", "TernStore", "TernMessage", "TernProtocol", "TernMetrics", logging, lifecycle, nioCore, .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]),
        // DKIM signing: keys, and signatures over TernMessage's canonical forms (swift-crypto).
        .target(name: "TernDKIM", dependencies: [
            "TernMessage", .product(name: "Crypto", package: "swift-crypto"), .product(name: "CryptoExtras", package: "swift-crypto"),
        ]),
        // Email authentication of received mail: SPF (RFC 7208), DKIM verification (RFC 6376), DMARC (RFC 7489).
        .target(name: "TernMailAuth", dependencies: [
            "TernProtocol", "TernRouting", "TernMessage", "TernDKIM", "TernStore", .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "CryptoExtras", package: "swift-crypto"),
        ]),
        // Postfix's cleanup role: the one path by which mail enters the store.
        .target(name: "TernIntake", dependencies: ["TernProtocol", "TernMessage", "TernStore", "TernDKIM", "TernMetrics", logging]),
        // Accounts for SMTP AUTH: PBKDF2 password hashes, the failed-login throttle, the Authenticator.
        .target(name: "TernAuth", dependencies: [
            "TernProtocol", "TernStore", "TernMetrics", logging, nioPosix, .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "CryptoExtras", package: "swift-crypto"), .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        // SwiftNIO SMTP server carrying out the session machine's actions.
        .target(name: "TernListener", dependencies: [
            "TernProtocol", "TernIntake", "TernMailAuth", "TernStore", "TernConcurrency", "TernMetrics", "CTernSystem", nioCore, nioPosix, logging, lifecycle,
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOTLS", package: "swift-nio"),
        ]),
        // The HTTP listener (Hummingbird): bearer tokens, /health, /metrics in Prometheus text format.
        .target(name: "TernHTTP", dependencies: [
            "TernStore", "TernScheduler", "TernIntake", "TernProtocol", "TernMessage", "TernMetrics", metrics, logging, lifecycle, nioCore,
            .product(name: "Hummingbird", package: "hummingbird"), .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // `tern` subcommands, the settings' declarations (TOML + flags), and `serve`, the composition root.
        .target(name: "TernCLI", dependencies: [
            "TernProtocol", "TernMessage", "TernStore", "TernIntake", "TernListener", "TernRouting", "TernDelivery",
            "TernScheduler", "TernAuth", "TernDKIM", "TernMailAuth", "TernHTTP", "TernMetrics", "CTernSystem", nioCore, nioPosix, logging, lifecycle,
            metrics, .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "X509", package: "swift-certificates"), .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "TOMLKit", package: "TOMLKit"), .product(name: "AsyncHTTPClient", package: "async-http-client"),
        ]),
        // Test helpers shared by test targets (a scripted SMTP sink); not in the product.
        .target(name: "TernTestSupport", dependencies: [
            nioCore, nioPosix, .product(name: "NIOConcurrencyHelpers", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ]),
        .executableTarget(name: "tern", dependencies: ["TernCLI", .product(name: "ArgumentParser", package: "swift-argument-parser")]),

        .testTarget(name: "TernProtocolTests", dependencies: ["TernProtocol", nioCore]),
        .testTarget(name: "TernDKIMTests", dependencies: ["TernDKIM", "TernMessage", "TernTestSupport"], exclude: ["dkim_verify.py"]),
        .testTarget(name: "TernMailAuthTests", dependencies: ["TernMailAuth", "TernRouting", "TernProtocol", "TernMessage", "TernDKIM", "TernTestSupport"],
                    exclude: ["spf_suite_dns.py", "dkim_sign.py"]),
        .testTarget(name: "TernRoutingTests", dependencies: ["TernRouting", "TernProtocol", "TernTestSupport"]),
        .testTarget(name: "TernDeliveryTests", dependencies: ["TernDelivery", "TernProtocol", "TernRouting", "TernTestSupport", nioCore, nioPosix,
                                                             .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl")]),
        .testTarget(name: "TernSchedulerTests", dependencies: [
            "TernScheduler", "TernDelivery", "TernStore", "TernProtocol", "TernRouting", .product(name: "GRDB", package: "GRDB.swift"),
        ], exclude: ["Fixtures"]),
        .testTarget(name: "TernMessageTests", dependencies: ["TernMessage"]),
        .testTarget(name: "TernStoreTests", dependencies: ["TernStore", "TernMessage", .product(name: "GRDB", package: "GRDB.swift")]),
        .testTarget(name: "TernIntakeTests", dependencies: ["TernIntake", "TernStore", "TernProtocol", "TernMessage"]),
        .testTarget(name: "TernListenerTests", dependencies: [
            "TernListener", "TernIntake", "TernStore", "TernProtocol", "CTernSystem", nioCore, logging,
            .product(name: "NIOEmbedded", package: "swift-nio"),
        ]),
        .testTarget(name: "TernAuthTests", dependencies: ["TernAuth", "TernStore", "TernProtocol", .product(name: "GRDB", package: "GRDB.swift"), .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]),
        .testTarget(name: "TernCLITests", dependencies: ["TernCLI", "TernScheduler", "TernStore", "TernProtocol", "TernListener", "TernDKIM", "TernRouting", "TernTestSupport", "TernHTTP"]),
        .testTarget(name: "TernHTTPTests", dependencies: ["TernHTTP", "TernStore", "TernProtocol"]),
        .testTarget(name: "TernIntegrationTests", dependencies: [
            "TernListener", "TernIntake", "TernStore", "TernProtocol", "TernCLI", "TernRouting", "TernDelivery",
            "TernScheduler", "TernTestSupport", "TernAuth", "TernDKIM", "TernMailAuth", "TernHTTP", "TernConcurrency", nioCore, nioPosix, logging, .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ], exclude: ["interop"]),
    ]
)

// tools/: the benchmark programs (they print figures; tests never depend on timing).
// tools/ also holds scripts: bench, crash-test, fuzz, help-flood, check-links, gen-migrations.
package.targets.append(.executableTarget(name: "tern-loadgen", path: "tools/loadgen",
                                          swiftSettings: [.swiftLanguageMode(.v5)])) // a plain threaded tool
package.products.append(.executable(name: "tern-loadgen", targets: ["tern-loadgen"]))
package.targets.append(.executableTarget(name: "tern-sink", dependencies: ["TernTestSupport", .product(name: "NIOPosix", package: "swift-nio")],
                                          path: "tools/sink", swiftSettings: [.swiftLanguageMode(.v5)]))
package.products.append(.executable(name: "tern-sink", targets: ["tern-sink"]))
package.targets.append(.executableTarget(name: "tern-queue-scale", dependencies: ["TernStore"], path: "tools/queue-scale"))
package.products.append(.executable(name: "tern-queue-scale", targets: ["tern-queue-scale"]))
package.targets.append(.executableTarget(name: "tern-metrics-cost", dependencies: ["TernMetrics", .product(name: "Metrics", package: "swift-metrics"),
                                                                             .product(name: "Prometheus", package: "swift-prometheus")], path: "tools/metrics-cost"))
