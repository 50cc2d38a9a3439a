import ArgumentParser
import Commands

@main
struct Switchyard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "A Mixture-of-Experts inference engine for models larger than fast memory.",
        subcommands: [SwitchyardCommands.compute[0], SwitchyardCommands.compute[1], Serve.self, BatchCommand.self] + SwitchyardCommands.compute.dropFirst(2))

    static func main() async { await SwitchyardCommands.main(Self.self) }
}
