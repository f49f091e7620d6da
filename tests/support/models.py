"""yMMSL models that several tests write to files or load."""

MACRO_MICRO_YMMSL = """
ymmsl_version: v0.2
models:
  coupled:
    components:
      macro:
        ports: {o_i: state_out, s: state_in}
        implementation: macro
        description: macro model
      micro:
        ports: {f_init: initial_state, o_f: final_state}
        implementation: micro
        description: micro model
        multiplicity: 2
    conduits:
      macro.state_out: micro.initial_state
      micro.final_state: macro.state_in
"""
"""A macro model driving two micro instances over vector ports."""
