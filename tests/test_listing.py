from crystal_train.listing import first_few


def test_first_few_lists_all_items_when_there_are_no_more_than_shown():
    assert first_few(["a", "b", "c"], shown=3) == "a, b, c"


def test_first_few_ends_with_an_ellipsis_when_items_are_left_out():
    assert first_few((n for n in range(1, 8)), shown=5) == "1, 2, 3, 4, 5, ..."
    assert first_few([]) == ""
