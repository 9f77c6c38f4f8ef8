"""Packed rows of tokenized examples, with the boundaries masked attention needs.

The batch format (agreed with the model side, kdengine/models/decoder.py):

    input_ids     [batch, seq_len] int64   the tokens of one or more whole examples, packed
    labels        [batch, seq_len] int64   the next token to predict, or IGNORE_INDEX (-100)
                                           where nothing trains (prompts, padding, and the last
                                           token of every example: no target crosses examples)
    position_ids  [batch, seq_len] int64   0, 1, 2, ... restarting at 0 at each example start;
                                           padding at a row's end continues the last example's
                                           count (its labels are IGNORE_INDEX)

An example starts where position_ids == 0. The model attends causally *within* each example
only (block-diagonal causal mask: query i sees key j iff j <= i and no example starts in
(j, i]), and uses position_ids for the rotary positions, as transformers' packed
("padding-free") collators and flash-attn's varlen kernels do. Rows are built once and stored
(kdengine.data.store); this module only lays examples into rows.
"""
