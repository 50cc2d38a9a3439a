import ArgumentParser
import Commands

/// Switchyard without the HTTP server: the binary that goes to a GPU machine or to another host,
/// small enough to carry there (its size is checked in CI; see scripts/build_static.sh).
@main
struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard-worker",
        abstract: "Switchyard's compute commands, without the HTTP server.",
        subcommands: SwitchyardCommands.compute)

    static func main() async { await SwitchyardCommands.main(Self.self) }
}
